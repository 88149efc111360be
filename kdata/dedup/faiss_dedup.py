"""Deduplication on faiss: exact, near-exact and semantic (SemDeDup), survivor = the higher ranked.

Three levels, each including the ones before (``--dedup exact|near|semantic``):

* **exact** — sha256 of the *decoded* pixels (mode, size, bytes), so a re-saved identical image
  matches too; one survivor per group.
* **near** — copies of the same image: cosine similarity of a pixel embedding made for that job
  (16×16 grayscale, mean-centred, L2-normalised; imagededup/fastdup style), *not* classifier
  features, which put distinct digits of one class close together. Default threshold
  ``NEAR_THRESHOLD``, chosen from measurements on the built-in pool (README, "Deduplication").
* **semantic** — SemDeDup (Abbas et al. 2023, arXiv 2303.09540): spherical k-means over
  L2-normalised model embeddings (the scores table's ``embedding`` column, the teacher's
  penultimate features), then pairwise cosine within each cluster, chunked. A sample is removed
  when its highest similarity to a better-ranked sample of its cluster reaches the threshold (≥), or,
  with ``frac``, the samples with the highest such similarity are removed until that fraction of
  the candidates is gone.

Inputs are always in *rank order* (best first), so "the survivor is the one the selection ranked
higher" is simply the lower index. Each level returns ``dup_of``: -1 for survivors, else the
index of the surviving sample the row duplicates (reason ``duplicate_of:<sample_id>``).

Similarity search and spherical k-means run on faiss (``kdata.core.vectors``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from kdata.core.errors import KdataError
from kdata.core.vectors import l2_normalize, rows_per_block, similar_pairs, spherical_kmeans
from kdata.dedup.features import pool_features
from kdata.models.pixels import DEFAULT_MAX_PIXELS
from kdata.dedup.text import NEAR_SKIPPED, TEXT_DEFAULTS, collapse_warning, pool_texts, text_embeddings, text_hash

LEVELS = ("exact", "near", "semantic")
# Defaults chosen on builtin:digits-web (see the README's dedup section for the measurement command).
NEAR_THRESHOLD = 0.996
SEMANTIC_THRESHOLD = 0.995


# ------------------------------------------------------------------------------------------------
# Similarity search


# ------------------------------------------------------------------------------------------------
# Levels (rows in rank order, best first)

def exact_groups(hashes) -> np.ndarray:
    """``dup_of`` for exact duplicates: every later row of a hash group points at its first row."""
    first: dict = {}
    dup_of = np.full(len(hashes), -1, dtype=np.int64)
    for i, h in enumerate(hashes):
        if h in first:
            dup_of[i] = first[h]
        else:
            first[h] = i
    return dup_of


def greedy_survivors(n: int, i: np.ndarray, j: np.ndarray, sim: np.ndarray) -> np.ndarray:
    """``dup_of`` from similar pairs (i < j): walking in rank order, a row is a duplicate of its
    most similar better-ranked *survivor*; a row whose similar rows were all removed survives.

    So every removed row names a kept row it is similar to (no chains of removals).
    """
    dup_of = np.full(n, -1, dtype=np.int64)
    if not len(i):
        return dup_of
    o = np.lexsort((-sim, i, j))  # by j, then i (rank), then similarity
    i, j = i[o], j[o]
    sim = sim[o]
    starts = np.flatnonzero(np.r_[True, j[1:] != j[:-1]])
    ends = np.r_[starts[1:], len(j)]
    for s, e in zip(starts, ends):
        cand = i[s:e]
        alive = dup_of[cand] < 0
        if alive.any():
            k = np.flatnonzero(alive)
            dup_of[j[s]] = cand[k[np.argmax(sim[s:e][k])]]
    return dup_of


def semdedup_scores(emb: np.ndarray, *, n_clusters: int | None = None, seed: int = 0,
                    chunk: int = 2048, inplace: bool = False) -> tuple[np.ndarray, np.ndarray, dict]:
    """SemDeDup within-cluster scores: for each row its highest cosine to a better-ranked row of
    its cluster, and that row's index (-1 when it is the best of its cluster).

    Clusters: spherical k-means (faiss) with ``n_clusters`` (default: clusters of ~max(100, √N)
    rows, so k-means and the per-cluster products both cost O(N^1.5·d)). Pairwise cosine per cluster in row chunks (memory
    ``chunk`` × cluster size). ``inplace``: ``emb`` is a float32 copy the caller owns, normalised in
    place rather than copied.
    """
    x = l2_normalize(emb, inplace=inplace)
    n = len(x)
    k = n_clusters or max(1, int(round(n / max(100.0, np.sqrt(n)))))
    _, assign = spherical_kmeans(x, k, seed=seed) if n > 1 else (None, np.zeros(n, np.int64))
    best = np.full(n, -np.inf, dtype=np.float32)
    arg = np.full(n, -1, dtype=np.int64)
    order = np.argsort(assign, kind="stable")  # within a cluster, still in rank order
    bounds = np.searchsorted(assign[order], np.arange(int(assign.max(initial=0)) + 2))
    for c in range(len(bounds) - 1):
        mem = order[bounds[c]:bounds[c + 1]]
        if len(mem) < 2:
            continue
        xm = x[mem]
        step = rows_per_block(chunk, len(mem))
        for s in range(0, len(mem), step):
            sim = xm[s:s + step] @ xm[: s + step].T  # rows s.. vs all earlier
            r = np.arange(sim.shape[0])
            sim[np.arange(sim.shape[1])[None, :] >= (s + r)[:, None]] = -np.inf  # only better-ranked
            a = sim.argmax(1)
            v = sim[r, a]
            has = np.isfinite(v)
            best[mem[s:s + step][has]] = v[has]
            arg[mem[s:s + step][has]] = mem[a[has]]
    return best, arg, {"clusters": int(k)}


def semdedup_survivors(best: np.ndarray, arg: np.ndarray, *, threshold: float | None, n_remove: int | None) -> np.ndarray:
    """``dup_of`` from SemDeDup scores: remove rows above ``threshold`` (or the ``n_remove`` rows
    with the highest score); each removed row points at the surviving root of its chain."""
    n = len(best)
    remove = np.zeros(n, dtype=bool)
    if n_remove is not None:
        if n_remove > 0:
            cand = np.flatnonzero(arg >= 0)
            top = cand[np.argsort(-best[cand], kind="stable")[:n_remove]]
            remove[top] = True
    else:
        remove = (arg >= 0) & (best >= threshold)
    dup_of = np.full(n, -1, dtype=np.int64)
    for r in np.flatnonzero(remove):  # ascending = rank order, so arg's root is already known
        a = arg[r]
        dup_of[r] = dup_of[a] if dup_of[a] >= 0 else a
    return dup_of


def _point_at_survivors(dup_of: np.ndarray) -> None:
    """A row removed at one level may be the survivor named by rows removed at an earlier level
    (an exact copy of a near copy): re-point those rows at the final survivor, in place."""
    while True:
        hit = np.flatnonzero(dup_of >= 0)
        nxt = dup_of[dup_of[hit]]
        chain = nxt >= 0
        if not chain.any():
            return
        dup_of[hit[chain]] = nxt[chain]


@dataclass
class DedupResult:
    dup_of: np.ndarray  # -1 survivor, else index of the surviving row (same order as the input)
    level_of: np.ndarray  # object: level that removed the row, None for survivors
    info: dict = field(default_factory=dict)


def check_options(level: str | None, *, threshold: float | None = None, frac: float | None = None) -> str | None:
    """Validate ``--dedup``/``--dedup-threshold``/``--dedup-frac``; returns the level or None."""
    if level in (None, "", "none"):
        if threshold is not None or frac is not None:
            raise KdataError("--dedup-threshold/--dedup-frac need --dedup exact|near|semantic")
        return None
    if level not in LEVELS:
        raise KdataError(f"--dedup '{level}': expected one of none, {', '.join(LEVELS)}")
    if threshold is not None and not (-1.0 <= float(threshold) <= 1.0):
        raise KdataError(f"--dedup-threshold {threshold}: a cosine similarity must lie in [-1, 1]")
    if frac is not None:
        if level != "semantic":
            raise KdataError("--dedup-frac applies to --dedup semantic (near/exact use a threshold)")
        if not (0.0 <= float(frac) < 1.0):
            raise KdataError(f"--dedup-frac {frac}: expected a fraction in [0, 1)")
        if threshold is not None:
            raise KdataError("give either --dedup-threshold or --dedup-frac, not both")
    if threshold is not None and level == "exact":
        raise KdataError("--dedup-threshold does not apply to --dedup exact (hash equality)")
    return level


def _rows(name: str, value, *, vectors: bool) -> tuple[int, object]:
    """(rows, value as a float32 matrix for ``vectors``): one KdataError line for a bad input."""
    if not vectors:
        try:
            return len(value), value
        except TypeError:
            raise KdataError(f"dedup: {name} must be a sequence (one per row), got {type(value).__name__}") from None
    try:
        x = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise KdataError(f"dedup: {name} must be a numeric array, rows × dims ({str(exc).splitlines()[0]})") from None
    if x.ndim != 2 or (len(x) and not x.shape[1]):
        raise KdataError(f"dedup: {name} must be a 2-D array, rows × dims (got shape {x.shape})")
    bad = np.zeros(len(x), dtype=bool)
    for s in range(0, len(x), 8192):  # a block at a time: no N × dims mask
        bad[s:s + 8192] = ~np.isfinite(x[s:s + 8192]).all(1)
    if bad.any():
        r = int(np.flatnonzero(bad)[0])
        raise KdataError(f"dedup: {name} row {r} is not finite ({x[r][~np.isfinite(x[r])][0]}); "
                         f"NaN/inf in {int(bad.sum())} of {len(x)} rows, which cosine similarity cannot compare")
    return len(x), x


def _check_inputs(level: str, given: dict) -> tuple[int, dict, list[str]]:
    """(n, the inputs checked, levels skipped): the deepest level's input is required, the levels
    before it run when their input is given; every input given has one row per ranked row."""
    need = {"exact": "hashes", "near": "pixels", "semantic": "embeddings"}
    if given[need[level]] is None:
        what = {"hashes": "hashes (one per row, e.g. sha256 of the payload)", "pixels": "pixels (a vector per row)",
                "embeddings": "embeddings (a model-feature vector per row)"}[need[level]]
        raise KdataError(f"dedup: level '{level}' needs {what}")
    rows, checked, skipped = {}, {}, []
    for lvl in LEVELS[:LEVELS.index(level) + 1]:
        name = need[lvl]
        if given[name] is None:
            skipped.append(f"{lvl} (no {name} given)")
            continue
        rows[name], checked[name] = _rows(name, given[name], vectors=name != "hashes")
    if len(set(rows.values())) > 1:
        raise KdataError("dedup: inputs differ in length (" + ", ".join(f"{k} {v} rows" for k, v in rows.items())
                         + "); give one entry per ranked row")
    return next(iter(rows.values())), checked, skipped


def dedup_ranked(*, level: str, hashes=None, pixels: np.ndarray | None = None, embeddings: np.ndarray | None = None,
                 threshold: float | None = None, frac: float | None = None, seed: int = 0,
                 n_clusters: int | None = None, near_default: float = NEAR_THRESHOLD,
                 semantic_default: float = SEMANTIC_THRESHOLD) -> DedupResult:
    """Deduplicate rows given in rank order (best first) at ``level`` (and the levels before).

    ``hashes`` for exact, ``pixels`` (near-dup vectors) for near, ``embeddings`` (model features) for
    semantic. The deepest level's input is required; a level before it whose input is left out
    (``None``) is skipped and listed in ``info["skipped"]`` — so ``dedup_ranked(level="semantic",
    embeddings=E)`` is SemDeDup alone on your own embeddings. Inputs given must have one entry per
    row; vectors must be finite 2-D arrays (else one KdataError line naming the input and row).
    ``threshold`` applies to the deepest level (near or semantic); the others use ``near_default`` /
    ``semantic_default`` (text: ``kdata.dedup.text``).
    """
    level = check_options(level, threshold=threshold, frac=frac)
    if level is None:
        raise KdataError("dedup: level must be one of exact, near, semantic")
    n, given, skipped = _check_inputs(level, {"hashes": hashes, "pixels": pixels, "embeddings": embeddings})
    dup_of = exact_groups(given["hashes"]) if "hashes" in given else np.full(n, -1, dtype=np.int64)
    level_of = np.where(dup_of >= 0, "exact", None).astype(object)
    info: dict = {"level": level, "n_in": n, "removed": {}}
    if "hashes" in given:
        info["removed"]["exact"] = int((dup_of >= 0).sum())
    if "pixels" in given:
        alive = np.flatnonzero(dup_of < 0)
        t = near_default if (threshold is None or level != "near") else float(threshold)
        # one copy of the rows left ([alive]), normalised in place
        i, j, s = similar_pairs(l2_normalize(given["pixels"][alive], inplace=True), threshold=t, seed=seed)
        sub = greedy_survivors(len(alive), i, j, s)
        hit = sub >= 0
        dup_of[alive[hit]] = alive[sub[hit]]
        level_of[alive[hit]] = "near"
        info["removed"]["near"] = int(hit.sum())
        info["near_threshold"] = t
    if level == "semantic":
        _semantic(given["embeddings"], dup_of, level_of, info, threshold=threshold, frac=frac, seed=seed,
                  n_clusters=n_clusters, default=semantic_default)
    if skipped:
        info["skipped"] = skipped
    _point_at_survivors(dup_of)
    info["kept"] = int((dup_of < 0).sum())
    return DedupResult(dup_of=dup_of, level_of=level_of, info=info)


def _semantic(embeddings: np.ndarray, dup_of: np.ndarray, level_of: np.ndarray, info: dict, *,
              threshold, frac, seed: int, n_clusters, default: float) -> None:
    """SemDeDup over the rows still alive, in place (``dup_of``, ``level_of``, ``info``)."""
    n = len(dup_of)
    alive = np.flatnonzero(dup_of < 0)
    best, arg, sinfo = semdedup_scores(np.ascontiguousarray(embeddings[alive], dtype=np.float32),
                                       n_clusters=n_clusters, seed=seed, inplace=True)  # one copy
    if frac is not None:
        n_remove = max(0, int(round(float(frac) * n)) - int((dup_of >= 0).sum()))
        sub = semdedup_survivors(best, arg, threshold=None, n_remove=n_remove)
        removed = sub >= 0
        t = float(best[removed].min()) if removed.any() else None
    else:
        t = default if threshold is None else float(threshold)
        sub = semdedup_survivors(best, arg, threshold=t, n_remove=None)
    hit = sub >= 0
    dup_of[alive[hit]] = alive[sub[hit]]
    level_of[alive[hit]] = "semantic"
    info["removed"]["semantic"] = int(hit.sum())
    info["semantic_threshold"] = t
    info["semantic_clusters"] = sinfo["clusters"]


# ------------------------------------------------------------------------------------------------
# Pipeline hook

def pipeline_dedup(cfg, pool, *, workers="auto"):
    """The ``dedup`` callable ``selection.select`` runs on the alive candidates in rank order.

    Exact/near read payloads unit by unit from ``pool`` (hash + 16×16 pixel vector per candidate,
    ~1 KB each); semantic also takes the scores table's ``embedding`` column. Text pools hash
    normalised text and embed the candidates with ``cfg.embedder`` for near/semantic
    (``kdata.dedup.text``). ``workers`` (``--workers``) compute the image features. Returns None when
    ``cfg.dedup`` is off.
    """
    level = check_options(cfg.dedup, threshold=cfg.dedup_threshold, frac=cfg.dedup_frac)
    if level is None:
        return None
    from kdata.pools.text import payload_kind

    if payload_kind(pool) == "text":
        return _text_run(cfg, pool, level)

    def run(view, order: np.ndarray) -> tuple[np.ndarray, dict]:
        ids = view.sample_ids[order]
        hashes, pixels = pool_features(pool, ids, pixels=level != "exact", workers=workers,
                                       max_pixels=getattr(cfg, "max_pixels", DEFAULT_MAX_PIXELS))
        emb = None
        if level == "semantic":
            if not view.has("embedding"):
                raise KdataError(f"{cfg.pool}: --dedup semantic needs model embeddings, but the teacher "
                                 "gives no penultimate features (scores have no 'embedding' column)")
            emb = view.col("embedding")[order]
        res = dedup_ranked(level=level, hashes=hashes, pixels=pixels, embeddings=emb,
                           threshold=cfg.dedup_threshold, frac=cfg.dedup_frac, seed=cfg.seed)
        if level != "exact":
            collapse_warning(res.info, embedder=cfg.teacher, frac=cfg.dedup_frac, images=True)
        return res.dup_of, res.info

    return run


def _text_run(cfg, pool, level: str):
    """The text pool's dedup callable: normalised-text hashes, embedder vectors for near/semantic."""
    embedder = getattr(cfg, "embedder", None)

    def run(view, order: np.ndarray) -> tuple[np.ndarray, dict]:
        texts = pool_texts(pool, view.sample_ids[order])
        hashes = [text_hash(t) for t in texts]
        if level == "exact" or not embedder:
            res = dedup_ranked(level="exact", hashes=hashes)
            if level != "exact":
                res.info.update(level=level, near=NEAR_SKIPPED)
            return res.dup_of, res.info
        from kdata.models.base import pick_device

        vec = text_embeddings(texts, embedder, device=pick_device("auto"))
        res = dedup_ranked(level=level, hashes=hashes, pixels=vec, embeddings=vec, threshold=cfg.dedup_threshold,
                           frac=cfg.dedup_frac, seed=cfg.seed, **TEXT_DEFAULTS)
        res.info["embedder"] = embedder
        collapse_warning(res.info, embedder=embedder, frac=cfg.dedup_frac)
        return res.dup_of, res.info

    return run


# ------------------------------------------------------------------------------------------------
# Already curated shards (``kdata dedup``)

def embed_images(images, model, *, batch_size: int = 256, device="cpu") -> np.ndarray:
    """Penultimate features of ``model`` for image payloads (for semantic dedup of shards): a sequence
    (``kdata.dataset.shard_rows.ShardColumn`` reads a row group at a time), decoded in order."""
    import torch

    from kdata.models.images import iter_decoded

    key = model.preprocess_key
    out = np.zeros((len(images), 0), np.float32)
    with torch.inference_mode():
        for idx, batch, bad in iter_decoded(images, [key], batch_size=batch_size, num_workers=0):
            if bad:
                raise KdataError(f"shards: {len(bad)} images cannot be decoded ({bad[0][1]})")
            _, feat = model.forward(batch[key].to(device))
            if feat is None:
                raise KdataError(f"{model.spec}: the model gives no penultimate features for semantic dedup")
            feat = feat.float().cpu().numpy()
            if not out.shape[1]:
                out = np.zeros((len(images), feat.shape[1]), np.float32)
            out[idx.numpy()] = feat
    return out
