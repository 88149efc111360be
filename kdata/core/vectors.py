"""Vector search on faiss: L2 normalisation, spherical k-means and thresholded similar pairs.

Similarity search (``similar_pairs``): exact ``faiss.IndexFlatIP`` range search up to
``EXACT_MAX`` rows; above that, cluster-then-compare: spherical k-means (faiss) into ~√N cells,
each row is compared (one BLAS matrix product per cell, chunked) with the rows whose nearest
centroid is one of its ``nprobe`` nearest — an IVF range search with dense per-cell products.
Found pairs always carry their exact cosine, so approximation can only miss pairs, never invent
them. faiss GPU is used for k-means and centroid search only when a subprocess probe succeeds.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys

import numpy as np

EXACT_MAX = 20_000  # up to this many rows the pair search is exact (flat index)


_PROBE = """
import numpy as np, faiss
res = faiss.StandardGpuResources()
x = np.random.default_rng(0).random((64, 8), dtype=np.float32)
idx = faiss.GpuIndexFlatIP(res, 8)
idx.add(x)
d, i = idx.search(x, 2)
assert (i[:, 0] == np.arange(64)).all()
"""


@functools.lru_cache(maxsize=1)
def faiss_gpu_ok() -> bool:
    """True when faiss GPU works here: probed once in a subprocess (a bad wheel can abort, not raise)."""
    if os.environ.get("KDATA_FAISS_GPU", "").lower() in ("0", "no", "false"):
        return False
    try:
        import faiss

        if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() < 1:
            return False
        r = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, timeout=120)
        return r.returncode == 0
    except Exception:
        return False



def l2_normalize(x: np.ndarray, *, inplace: bool = False, chunk: int = 8192) -> np.ndarray:
    """Rows scaled to unit length (float32, C-contiguous); all-zero rows stay zero. Worked ``chunk``
    rows at a time (no N × dims temporary); ``inplace``: scale ``x`` itself when it already is a
    float32 C-contiguous array (a copy the caller owns), so a large matrix is not held twice. The
    values are the same either way."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    out = x if inplace else np.empty_like(x)
    for s in range(0, len(x), chunk):
        norm = np.linalg.norm(x[s:s + chunk], axis=1, keepdims=True)
        np.divide(x[s:s + chunk], np.where(norm > 0, norm, 1.0), out=out[s:s + chunk])
    return out


def spherical_kmeans(x: np.ndarray, k: int, *, seed: int = 0, niter: int = 20,
                     max_points_per_centroid: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Spherical k-means (faiss) over L2-normalised rows: (centroids, nearest-centroid index)."""
    n = len(x)
    k = int(max(1, min(k, n)))
    if k == 1:
        c = l2_normalize(x.mean(0, keepdims=True))
        return c, np.zeros(n, dtype=np.int64)
    centroids = _train_centroids(x, k, seed=seed, niter=niter, max_points_per_centroid=max_points_per_centroid)
    _, a = _centroid_search(centroids, x, 1)
    return centroids, a[:, 0]



def _train_centroids(x, k, *, seed, niter, max_points_per_centroid):
    import faiss

    km = faiss.Kmeans(x.shape[1], k, niter=niter, spherical=True, seed=int(seed) + 1, gpu=faiss_gpu_ok(),
                      max_points_per_centroid=max_points_per_centroid, min_points_per_centroid=1)
    km.train(x)
    return km.centroids



def _centroid_search(centroids: np.ndarray, x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    import faiss

    index = faiss.IndexFlatIP(centroids.shape[1])
    if faiss_gpu_ok():
        index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    return index.search(x, k)



def similar_pairs(x: np.ndarray, *, threshold: float, seed: int = 0, nprobe: int = 2,
                  exact_max: int = EXACT_MAX, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs (i < j) of L2-normalised rows with cosine ≥ ``threshold``: (i, j, cosine).

    Exact (faiss ``IndexFlatIP.range_search``) up to ``exact_max`` rows; above, cell-restricted
    (see the module docstring) — recall ≥ 0.99 of near-duplicate pairs in our benchmark, and
    every reported pair is real.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    n = len(x)
    if n < 2:
        e = np.zeros(0, np.int64)
        return e, e, np.zeros(0, np.float32)
    if n <= exact_max:
        return _flat_pairs(x, threshold, chunk=chunk)
    return _cell_pairs(x, threshold, seed=seed, nprobe=nprobe, chunk=chunk)



def _flat_pairs(x, threshold, *, chunk):
    import faiss

    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    out_i, out_j, out_s = [], [], []
    # range_search keeps inner products strictly above its radius: search just below the threshold
    # and keep ≥ threshold, as the cell-restricted search does
    radius = float(np.nextafter(np.float32(threshold), np.float32(-np.inf)))
    for s in range(0, len(x), chunk):
        lims, dist, lab = index.range_search(x[s:s + chunk], radius)
        qi = np.repeat(np.arange(s, s + len(lims) - 1, dtype=np.int64), np.diff(lims).astype(np.int64))
        lab = lab.astype(np.int64)
        keep = (qi < lab) & (dist >= np.float32(threshold))
        out_i.append(qi[keep]), out_j.append(lab[keep]), out_s.append(dist[keep])
    return np.concatenate(out_i), np.concatenate(out_j), np.concatenate(out_s).astype(np.float32)



def _cell_pairs(x, threshold, *, seed, nprobe, chunk):
    n = len(x)
    k = int(max(2, round(np.sqrt(n))))
    centroids = _train_centroids(x, k, seed=seed, niter=10, max_points_per_centroid=32)
    _, probe = _centroid_search(centroids, x, nprobe)
    home = probe[:, 0]
    order = np.argsort(home, kind="stable")  # rows grouped by home cell, as positions (no copy of x)
    bounds = np.searchsorted(home[order], np.arange(k + 1))
    flat = probe.ravel()
    qorder = np.argsort(flat, kind="stable")
    qbounds = np.searchsorted(flat[qorder], np.arange(k + 1))
    out_i, out_j, out_s = [], [], []
    for c in range(k):
        lo, hi = bounds[c], bounds[c + 1]
        if hi == lo:
            continue
        members = order[lo:hi]
        xs = x[members]  # this cell's rows, gathered once (one cell at a time)
        queries = qorder[qbounds[c]:qbounds[c + 1]] // nprobe
        step = rows_per_block(chunk, hi - lo)
        for s in range(0, len(queries), step):
            q = queries[s:s + step]
            sim = x[q] @ xs.T
            a, b = np.nonzero(sim >= threshold)
            qi, mj = q[a], members[b]
            keep = qi != mj
            # a pair whose rows share a home cell is seen from both sides: keep qi < mj there
            same = home[qi[keep]] == c
            ok = ~same | (qi[keep] < mj[keep])
            i_, j_, s_ = qi[keep][ok], mj[keep][ok], sim[a, b][keep][ok]
            out_i.append(np.minimum(i_, j_)), out_j.append(np.maximum(i_, j_)), out_s.append(s_)
    if not out_i:
        e = np.zeros(0, np.int64)
        return e, e, np.zeros(0, np.float32)
    i, j, s = np.concatenate(out_i), np.concatenate(out_j), np.concatenate(out_s)
    # a cross-cell pair can be found from both cells: keep one copy
    key = i * n + j
    _, first = np.unique(key, return_index=True)
    return i[first], j[first], s[first].astype(np.float32)



def rows_per_block(chunk: int, width: int, *, max_cells: int = 1 << 25) -> int:
    """Rows per similarity block so a block stays ≤ ``max_cells`` floats (128 MB) however big a cell."""
    return int(max(16, min(chunk, max_cells // max(1, width))))


def group_cosine(x: np.ndarray, groups: np.ndarray, *, ref: np.ndarray | None = None,
                 chunk: int = 16384) -> np.ndarray:
    """cos(x_i, centroid of i's group), float64 per row; the centroid is the mean of the group's unit
    rows that ``ref`` marks (all by default), NaN for a group with none.

    Rows are sorted by group once, summed per segment with ``np.add.reduceat`` and normalised
    ``chunk`` rows at a time in float64: memory O(chunk·D + groups·D), time O(N·D) for any number of
    groups, where a loop over groups costs O(N·groups) and a float64 copy of ``x`` 8·D bytes a row."""
    n = len(groups)
    order = np.argsort(groups, kind="stable")
    seg = np.cumsum(np.r_[False, np.diff(np.asarray(groups)[order]) != 0]) if n else np.zeros(0, np.int64)
    marked = np.ones(n, bool) if ref is None else np.asarray(ref, bool)[order]
    sums = np.zeros((int(seg[-1]) + 1 if n else 0, x.shape[1]))
    for s in range(0, n, chunk):
        g, rows = seg[s:s + chunk][marked[s:s + chunk]], order[s:s + chunk][marked[s:s + chunk]]
        if len(g):
            first = np.flatnonzero(np.r_[True, np.diff(g) != 0])
            sums[g[first]] += np.add.reduceat(_unit_rows64(x, rows), first, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):  # a group with no marked row: NaN
        cen = sums / np.bincount(seg[marked], minlength=len(sums))[:, None]
    cen /= np.maximum(np.sqrt(np.einsum("ij,ij->i", cen, cen)), 1e-12)[:, None]
    out = np.zeros(n)
    for s in range(0, n, chunk):
        out[order[s:s + chunk]] = np.einsum("ij,ij->i", _unit_rows64(x, order[s:s + chunk]), cen[seg[s:s + chunk]])
    return out


def _unit_rows64(x: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Rows ``rows`` of ``x`` in float64, scaled to unit length (all-zero rows stay zero)."""
    e = np.asarray(x[rows], dtype=np.float64)
    return e / np.maximum(np.sqrt(np.einsum("ij,ij->i", e, e)), 1e-12)[:, None]
