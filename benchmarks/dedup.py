"""Near-duplicate search: kdata (faiss k-means cells + BLAS) vs scikit-learn's exact radius search.

Data: N unit vectors in d=512 drawn around 1,000 random centres (like real embeddings, which are
clustered), with planted near-duplicate pairs (cosine ≥ 0.97). Both searches look for all pairs
with cosine ≥ 0.95 (scikit-learn: ``NearestNeighbors(algorithm="brute")`` Euclidean radius
√(2 − 2·0.95) on the unit vectors, which is the same set). Printed: each one's time, the recall of
the planted pairs, kdata's recall of *all* pairs scikit-learn finds, the number of rows dedup
removes that are not planted duplicates (must be 0), and kdata's time at N = 1,000,000.

    python benchmarks/dedup.py                     # N = 100,000 vs scikit-learn, then kdata at 1M
    python benchmarks/dedup.py --skip-1m           # without the 1M run
    python benchmarks/dedup.py --sklearn-queries 20000   # time scikit-learn on a query subset
                                                         # and scale linearly (brute force is linear)
    python benchmarks/dedup.py --thresholds        # the default-threshold measurements on builtin:digits-web

With the default sizes (N = 100,000 against every scikit-learn query, then N = 1,000,000) and
without ``--no-write``, the table is spliced into ``docs/benchmarks/dedup.md``
(``benchmarks/doc_tables.py``).
"""

from __future__ import annotations

import argparse
import os
import runpy
import shlex
import sys
import time

# sibling benchmark scripts (e.g. select.py) must not shadow stdlib modules
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from kdata.dedup.faiss_dedup import greedy_survivors
from kdata.core.vectors import l2_normalize, similar_pairs  # noqa: E402

THRESHOLD = 0.95


def planted(n: int, d: int, n_pairs: int, *, seed: int = 0, centres: int = 1000, chunk: int = 100_000):
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, d)).astype(np.float32)
    x = np.empty((n, d), np.float32)
    for s in range(0, n, chunk):  # bounded temporaries at 1M
        m = min(chunk, n - s)
        x[s:s + m] = c[rng.integers(0, centres, m)] + 0.9 * rng.standard_normal((m, d), dtype=np.float32)
    x = l2_normalize(x)
    perm = rng.permutation(n)
    a, b = perm[:n_pairs], perm[n_pairs:2 * n_pairs]
    x[b] = l2_normalize(x[a] + 0.01 * rng.standard_normal((n_pairs, d), dtype=np.float32))
    return x, a, b


def pair_set(i, j) -> set:
    return set(zip(np.minimum(i, j).tolist(), np.maximum(i, j).tolist()))


def run_kdata(x, *, seed=0):
    t0 = time.perf_counter()
    i, j, s = similar_pairs(x, threshold=THRESHOLD, seed=seed)
    dup_of = greedy_survivors(len(x), i, j, s)
    return time.perf_counter() - t0, i, j, dup_of


def run_sklearn(x, *, queries: int):
    from sklearn.neighbors import NearestNeighbors

    radius = float(np.sqrt(2 - 2 * THRESHOLD))
    t0 = time.perf_counter()
    nn = NearestNeighbors(radius=radius, algorithm="brute", metric="euclidean").fit(x)
    q = x[:queries]
    _, ind = nn.radius_neighbors(q, return_distance=True)
    secs = time.perf_counter() - t0
    qi = np.repeat(np.arange(len(q)), [len(r) for r in ind])
    qj = np.concatenate(ind) if len(ind) else np.zeros(0, np.int64)
    keep = qi != qj
    return secs * (len(x) / queries), qi[keep], qj[keep]


def benchmark(n: int, *, n_pairs: int, sklearn_queries: int | None, seed: int = 0) -> dict:
    """kdata's search (and scikit-learn's, unless ``sklearn_queries`` is None) on ``n`` planted vectors."""
    x, a, b = planted(n, 512, n_pairs, seed=seed)
    want = pair_set(a, b)
    tk, i, j, dup_of = run_kdata(x, seed=seed)
    found = pair_set(i, j)
    rec_k = len(found & want) / len(want)
    removed = set(np.flatnonzero(dup_of >= 0).tolist())
    wrong = len(removed - set(a.tolist()) - set(b.tolist()))
    print(f"N={n:,} d=512 planted pairs={n_pairs:,} threshold={THRESHOLD}")
    print(f"  kdata    {tk:8.2f} s  recall(planted) {rec_k:.4f}  pairs {len(found):,}  removed {len(removed):,}"
          f"  non-duplicates removed {wrong}")
    r = {"n": n, "pairs": n_pairs, "kdata_s": tk, "kdata_recall": rec_k, "found": len(found),
         "removed": len(removed), "wrong": wrong}
    if sklearn_queries is None:
        return r
    q = min(n, sklearn_queries)
    ts, si, sj = run_sklearn(x, queries=q)
    s_all = pair_set(si, sj)
    if q < n:  # planted pairs with a query row in the subset
        want_q = {(p, r) for p, r in want if p < q or r < q}
        k_q = {(p, r) for p, r in found if p < q or r < q}
    else:
        want_q, k_q = want, found
    rec_s = len(s_all & want_q) / max(1, len(want_q))
    rec_ks = len(k_q & s_all) / max(1, len(s_all))
    note = "" if q == n else f" (timed on {q:,} queries, scaled ×{n / q:.1f})"
    print(f"  sklearn  {ts:8.2f} s  recall(planted) {rec_s:.4f}  pairs {len(s_all):,}{note}")
    print(f"  kdata recall of every pair sklearn finds: {rec_ks:.4f}   speed-up ×{ts / tk:.1f}")
    return {**r, "sklearn_s": ts, "sklearn_recall": rec_s, "sklearn_pairs": len(s_all), "queries": q,
            "kdata_recall_of_sklearn": rec_ks}


def thresholds() -> None:
    """The measurements behind the default near/semantic thresholds (builtin:digits-web)."""
    from kdata.pools.builtin import digits_web, digits_web_truth
    from kdata.dedup.features import payload_features
    from kdata.selection.methods.view import ScoreView
    from kdata.pipeline.config import SelectConfig
    from kdata.pipeline.prepare import prepare
    from kdata.scoring.score import score_pool

    pool, truth = digits_web(), digits_web_truth().to_pandas()
    tr, lab = truth.truth.to_numpy(), truth.true_label.to_numpy()
    pos = {s: i for i, s in enumerate(truth.sample_id)}
    nd = np.flatnonzero(tr == "near_dup")
    src = np.array([pos[s] for s in truth.dup_of.to_numpy()[nd]])
    distinct = np.flatnonzero(~np.isin(tr, ["near_dup", "exact_dup"]))
    clean = distinct[tr[distinct] == "clean"]

    _, px = payload_features(pool, pixels=True)
    s = px @ px.T
    np.fill_diagonal(s, -1)
    sd, nn = s[nd, src], s[np.ix_(clean, distinct)].max(1)
    print("near (16x16 grayscale, mean-centred, L2):")
    print(f"  planted near copies vs source: min {sd.min():.4f}  p1 {np.percentile(sd, 1):.4f}  median {np.median(sd):.4f}")
    print(f"  distinct clean digits, nearest distinct neighbour: median {np.median(nn):.4f}  "
          f"p99 {np.percentile(nn, 99):.4f}  max {nn.max():.4f}")

    prep = prepare(SelectConfig())
    scores, _, _ = score_pool(prep.pool, prep.teacher, prep.student, config=prep.score_cfg)
    view = ScoreView(scores, num_classes=prep.teacher.num_classes)
    order = np.array([pos[x] for x in view.sample_ids])
    e = np.zeros((len(pos), view.col("embedding").shape[1]), np.float32)
    e[order] = l2_normalize(view.col("embedding"))
    s = e @ e.T
    np.fill_diagonal(s, -1)
    same = lab[clean][:, None] == lab[distinct][None, :]
    nn_same = np.where(same, s[np.ix_(clean, distinct)], -1).max(1)
    sd = s[nd, src]
    print("semantic (teacher penultimate features, L2):")
    print(f"  planted near copies vs source: min {sd.min():.4f}  p1 {np.percentile(sd, 1):.4f}  median {np.median(sd):.4f}")
    for t in (0.95, 0.98, 0.99, 0.995, 0.998):
        print(f"  distinct clean digits with a same-class distinct neighbour above {t}: {(nn_same > t).mean():.1%}")


def levels_table() -> None:
    """Each level on builtin:digits-web, candidates in kd3 rank order (what ``kdata select --method kd3``
    dedups): planted copies found and distinct clean digits wrongly removed, against the truth table."""
    from kdata.pools.builtin import digits_web_truth
    from kdata.dedup.faiss_dedup import dedup_ranked
    from kdata.dedup.features import pool_features
    from kdata.selection.methods import get_method
    from kdata.selection.methods.view import ScoreView
    from kdata.pipeline.config import SelectConfig
    from kdata.pipeline.prepare import prepare
    from kdata.scoring.score import score_pool
    from kdata.selection.ranking import top_k

    prep = prepare(SelectConfig(method="kd3"))
    scores, _, _ = score_pool(prep.pool, prep.teacher, prep.student, config=prep.score_cfg)
    view = ScoreView(scores, num_classes=prep.teacher.num_classes)
    score = get_method("kd3").fn(view, budget=len(view) // 2, seed=0).score
    order = top_k(score, len(score), seed=0)
    ids = view.sample_ids[order]
    t = digits_web_truth().to_pandas().set_index("sample_id").loc[ids]
    tr = t.truth.to_numpy()
    root = np.array([d if isinstance(d, str) else s for s, d in zip(ids, t.dup_of.to_numpy())])
    at = {s: i for i, s in enumerate(ids)}
    hashes, px = pool_features(prep.pool, ids, pixels=True)
    emb = view.col("embedding")[order]
    planted_rows = np.flatnonzero(np.isin(tr, ["near_dup", "exact_dup"]))
    n_clean = int((tr == "clean").sum())
    print("level                               removed (exact/near/semantic)  planted found  clean removed")
    for kw in (dict(level="near"), dict(level="semantic"), dict(level="semantic", threshold=0.99),
               dict(level="semantic", threshold=0.998), dict(level="semantic", frac=0.2)):
        r = dedup_ranked(hashes=hashes, pixels=px, embeddings=emb, **kw)
        d = r.dup_of

        def same(k):
            return d[k] >= 0 and root[d[k]] == root[k]

        found = sum(1 for k in planted_rows if same(k) or same(at[root[k]]))
        wrong = sum(1 for k in np.flatnonzero(d >= 0) if root[d[k]] != root[k] and tr[k] == "clean")
        rm = r.info["removed"]
        name = " ".join(f"{k}={v}" for k, v in kw.items())
        print(f"{name:36s}{rm.get('exact', 0):>5}/{rm.get('near', 0)}/{rm.get('semantic', '-'):<18}"
              f"{found:>5}/{len(planted_rows)}      {wrong}/{n_clean}")


def markdown(r: dict) -> str:
    """The docs block: how it was measured (sizes, cores, versions, seconds, command) and the table."""
    import sklearn
    import threadpoolctl

    a, big = r["runs"][0], r["runs"][1] if len(r["runs"]) > 1 else None
    scaled = "" if a["queries"] == a["n"] else f" (timed on {a['queries']:,} queries, scaled ×{a['n'] / a['queries']:.1f})"
    head = (f"N = {a['n']:,} unit vectors, d = 512, {a['pairs']:,} planted pairs, threshold {THRESHOLD}; scikit-learn "
            f"{sklearn.__version__}, numpy {np.__version__}, {threadpoolctl.threadpool_info()[0]['num_threads']} BLAS "
            f"threads. Measured in {r['seconds']:.0f} s on {r['cpus']} CPU cores (load average {r['load']:.1f} at the "
            f"start) with:\n\n    {r['command']}\n")
    speed = a["sklearn_s"] / a["kdata_s"]
    met = "met" if speed >= 10 and a["kdata_recall"] >= 0.99 else "**not met**"
    rows = ["| | time | recall of planted pairs | other |", "|---|---|---|---|",
            f"| kdata | {a['kdata_s']:.2f} s | {a['kdata_recall']:.4f} | {a['wrong']} non-duplicates removed; finds "
            f"{a['kdata_recall_of_sklearn']:.2%} of all pairs scikit-learn finds |",
            f"| scikit-learn exact | {a['sklearn_s']:.1f} s{scaled} | {a['sklearn_recall']:.4f} | |",
            f"| **speed-up** | **×{speed:.1f}** | | target ≥ 10× at recall ≥ 0.99: {met} |"]
    if big:
        rows.append(f"| kdata at N = {big['n']:,} ({big['pairs']:,} planted pairs) | {big['kdata_s']:.0f} s | "
                    f"{big['kdata_recall']:.4f} | {big['wrong']} non-duplicates removed |")
    return head + "\n" + "\n".join(rows) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--pairs", type=int, default=2_000)
    ap.add_argument("--sklearn-queries", type=int, default=None, help="default: all N rows")
    ap.add_argument("--skip-1m", action="store_true", help="skip kdata's N=1,000,000 run")
    ap.add_argument("--thresholds", action="store_true", help="only the default-threshold measurements")
    ap.add_argument("--no-write", action="store_true", help="do not write docs/benchmarks/dedup.md")
    args = ap.parse_args(argv)
    if args.thresholds:
        thresholds()
        levels_table()
        return 0
    import threadpoolctl

    t_start, load = time.perf_counter(), os.getloadavg()[0]
    print(f"threads: {threadpoolctl.threadpool_info()[0]['num_threads']} BLAS")
    runs = [benchmark(args.n, n_pairs=args.pairs, sklearn_queries=args.sklearn_queries or args.n)]
    if not args.skip_1m:
        runs.append(benchmark(1_000_000, n_pairs=10 * args.pairs, sklearn_queries=None))
    report = {"runs": runs, "load": load, "cpus": os.cpu_count(), "seconds": time.perf_counter() - t_start,
              "command": "python benchmarks/dedup.py" + "".join(" " + shlex.quote(a) for a in
                                                                (sys.argv[1:] if argv is None else argv))}
    md = markdown(report)
    print("\n" + md)
    full = (args.n, args.pairs, args.sklearn_queries in (None, args.n), args.skip_1m) == (100_000, 2_000, True, False)
    if not args.no_write and full:
        runpy.run_path(str(Path(__file__).resolve().parent / "doc_tables.py"))["splice"]("dedup", md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
