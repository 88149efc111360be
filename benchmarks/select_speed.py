"""Selection speed: rows/s per method, and the logit statistics against the memory bandwidth.

(Named ``select_speed.py``, not ``select.py``: a ``select.py`` in this folder shadows the stdlib
``select`` module for every script run from here.)

    python benchmarks/select_speed.py                 # N = 1,000,000 rows, C = 1,000 classes (8 GB of logits)
    python benchmarks/select_speed.py --n 200000      # smaller
    python benchmarks/select_speed.py --no-write      # print the table, leave the docs alone

1. Synthetic float32 teacher/student logits (N × C).
2. Baseline, same run: bandwidth of a plain ``sum`` over both arrays (GB/s).
3. The memory-bound statistics (KL both ways, entropies, confidences, margins, predictions)
   with ``kdata.core.stats.logit_stats``: the eager backend on a slice; then the default backend
   (``native`` where it builds) on all rows in ``--pairs`` back-to-back pairs with a full ``sum``
   pass (a shared machine's load swings hit both sides of a pair alike): the median pair's ratio
   is the figure (target ≥ 25%); then one pair with the ``compiled`` backend for comparison.
4. What scoring runs per batch, ``kdata.core.stats.disagreement`` (the statistics plus top-5 soft
   labels), over all rows: rows/s.
5. Each method's ``select`` on a scores table of N rows (top-5 soft labels, as kdata stores them
   for C > 128), budget 30%: rows/s.

With the default sizes and methods (N = 1,000,000, C = 1,000, every method) and without
``--no-write``, the tables are spliced into ``docs/benchmarks/select_speed.md``
(``benchmarks/doc_tables.py``).
"""

from __future__ import annotations

import argparse
import os
import runpy
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

HERE = Path(__file__).resolve().parent
DEFAULT_METHODS = "random,teacher_confidence,student_entropy,disagreement,kd3,rad,miniplm,ddk,critic"


def best_of(fn, reps=3):
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def make_logits(n, c, seed=0, chunk=50_000):
    rng = np.random.default_rng(seed)
    t = np.empty((n, c), dtype=np.float32)
    s = np.empty((n, c), dtype=np.float32)
    for i in range(0, n, chunk):
        m = min(chunk, n - i)
        t[i:i + m] = rng.standard_normal((m, c), dtype=np.float32) * 3
        s[i:i + m] = t[i:i + m] + rng.standard_normal((m, c), dtype=np.float32) * 1.5
    return t, s


def scores_table(t, s, *, backend, topk=5, chunk=65_536) -> tuple[pa.Table, float]:
    """The scores table kdata builds, from ``kdata.core.stats.disagreement`` (statistics + top-k soft
    labels, what scoring runs per batch) over chunks; also returns that function's seconds."""
    from kdata.core.stats import disagreement

    n, c = t.shape
    parts: dict[str, list] = {}
    sec = 0.0
    with torch.inference_mode():
        for i in range(0, n, chunk):
            t0 = time.perf_counter()
            st = disagreement(torch.from_numpy(t[i:i + chunk]), torch.from_numpy(s[i:i + chunk]),
                              topk=topk, backend=backend)
            sec += time.perf_counter() - t0
            for k, v in st.items():
                parts.setdefault(k, []).append(v.numpy())
    cat = {k: np.concatenate(v) for k, v in parts.items()}
    ti, tp, si, sp = (cat[k] for k in ("teacher_topk_idx", "teacher_topk_prob", "student_topk_idx",
                                       "student_topk_prob"))

    def fsl(a, typ):
        return pa.FixedSizeListArray.from_arrays(pa.array(a.reshape(-1)), a.shape[1]).cast(pa.list_(typ))

    rng = np.random.default_rng(1)
    return pa.table({
        "sample_id": pa.array([f"r{i}" for i in range(n)]),
        "label_idx": pa.array(rng.integers(-1, c, n).astype(np.int32)),
        "teacher_pred": pa.array(cat["teacher_pred"]), "student_pred": pa.array(cat["student_pred"]),
        "agree": pa.array(cat["agree"]),
        "teacher_conf": pa.array(cat["teacher_conf"]), "student_conf": pa.array(cat["student_conf"]),
        "teacher_margin": pa.array(cat["teacher_margin"]), "student_margin": pa.array(cat["student_margin"]),
        "teacher_entropy": pa.array(cat["teacher_entropy"]), "student_entropy": pa.array(cat["student_entropy"]),
        "kl_ts": pa.array(cat["kl_ts"]), "kl_st": pa.array(cat["kl_st"]),
        "teacher_label_prob": pa.array(np.full(n, np.nan, np.float32)),
        "teacher_topk_idx": fsl(ti, pa.int32()), "teacher_topk_prob": fsl(tp, pa.float32()),
        "teacher_topk_logit": fsl(cat["teacher_topk_logit"], pa.float32()), "student_topk_idx": fsl(si, pa.int32()),
        "student_topk_prob": fsl(sp, pa.float32()),
        "domain": pa.array(np.array(["web", "books", "code", "news"])[rng.integers(0, 4, n)]),
    }), sec


def markdown(r: dict) -> str:
    """The docs block: how it was measured (sizes, threads, seconds, versions, command), then the
    statistics-against-bandwidth table and the per-method table of this run."""
    pairs, comp = r["pairs"], r.get("compiled")
    gbs = [p["gbs"] for p in pairs]
    sums = [p["sum_gbs"] for p in pairs]
    rows = [p["rows_per_s"] / 1e6 for p in pairs]
    ratios = [p["ratio"] for p in pairs]
    head = (f"N = {r['n']:,} rows, C = {r['c']:,} classes ({r['gb']:.1f} GB of float32 logits), "
            f"{r['threads']} torch threads, statistics backend `{r['backend']}` ({r['native']}); "
            f"torch {torch.__version__}, numpy {np.__version__}. Measured in {r['seconds']:.0f} s on "
            f"{r['cpus']} CPU cores (load average {r['load']:.1f} at the start) with:\n\n    {r['command']}\n")
    stats = ["| what | figure |", "|---|---:|",
             f"| plain `sum` over both logit arrays (baseline) | {r['sum_gbs']:.1f} GB/s sustained over ≥ 3 s, "
             f"{r['sum_best_gbs']:.1f} GB/s best burst; {min(sums):.1f}–{max(sums):.1f} GB/s in the pairs |",
             f"| KL + entropies + margins + predictions, `{r['backend']}`, all rows, {len(pairs)} pairs | "
             f"{min(gbs):.1f}–{max(gbs):.1f} GB/s, {min(rows):.2f}–{max(rows):.2f} M rows/s |",
             f"| **ratio, median of {len(pairs)} pairs** | **{r['median_ratio']:.1%} of the sum's bandwidth** "
             f"(pairs: {min(ratios):.1%}–{max(ratios):.1%}; target ≥ 25%) |"]
    if comp:
        stats.append(f"| the same statistics, `compiled` backend (one pair, for comparison) | {comp['gbs']:.1f} GB/s "
                     f"({comp['ratio']:.1%}) |")
    stats += [f"| the same statistics, eager blocks ({r['eager_rows']:,} rows) | {r['eager_gbs']:.2f} GB/s "
              f"({r['eager_gbs'] / r['sum_gbs']:.1%} of the sustained sum) |",
              f"| what scoring runs per batch: statistics + top-5 soft labels (`disagreement`) | "
              f"{r['disagreement_rows_per_s'] / 1e6:.2f} M rows/s ({r['disagreement_frac']:.0%} of the sum's bandwidth) |"]
    methods = ["| method | seconds | rows/s |", "|---|---:|---:|"]
    methods += [f"| {m['method']} | {m['seconds']:.2f} | {m['rows_per_s']:,.0f} |" for m in r["methods"]]
    return (head + "\n" + "\n".join(stats) + f"\n\nEach method's `select` on a scores table of the same "
            f"{r['n']:,} rows (top-5 soft labels), budget 30%:\n\n" + "\n".join(methods) + "\n")


# long: one measurement after another, in the order the docstring lists them
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--c", type=int, default=1000)
    ap.add_argument("--eager-rows", type=int, default=20_000, help="rows for the eager statistics timing")
    ap.add_argument("--methods", default=DEFAULT_METHODS)
    ap.add_argument("--pairs", type=int, default=5, help="paired sum/statistics passes")
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--skip-compiled", action="store_true", help="skip the torch.compile comparison pair")
    ap.add_argument("--no-write", action="store_true", help="do not write docs/benchmarks/select_speed.md")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from kdata.selection.critic_model import feature_matrix, fit_critic
    from kdata.core import native
    from kdata.core.stats import choose_backend, logit_stats
    from kdata.selection.run import select

    t_start, load = time.perf_counter(), os.getloadavg()[0]
    n, c = args.n, args.c
    print(f"# kdata selection benchmark: N={n:,} C={c:,} threads={args.threads} load={load:.1f}")
    t, s = make_logits(n, c)
    nbytes = t.nbytes + s.nbytes
    tt, st_ = torch.from_numpy(t), torch.from_numpy(s)
    best = best_of(lambda: (tt.sum(), st_.sum()))
    # mean over ≥ 3 s as well: on a shared machine a short burst catches idle cores the long
    # statistics run does not get, so the ratio below uses the sustained (mean) figure
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < 3.0 or reps < 3:
        tt.sum(), st_.sum()
        reps += 1
    bw = reps * nbytes / (time.perf_counter() - t0) / 1e9
    print(f"plain sum over both arrays ({nbytes / 1e9:.2f} GB): {bw:.2f} GB/s sustained, "
          f"{nbytes / best / 1e9:.2f} GB/s best burst  (baseline)")

    m = min(args.eager_rows, n)
    sec = best_of(lambda: logit_stats(t[:m], s[:m], backend="eager"), reps=2)
    eager = (t[:m].nbytes + s[:m].nbytes) / sec / 1e9
    print(f"KL+entropy+margin eager   ({m:,} rows): {eager:.3f} GB/s = {eager / bw:6.1%} of sum, {m / sec:,.0f} rows/s")
    backend = choose_backend("cpu", c, n * c)
    print(native.status())
    t0 = time.perf_counter()
    logit_stats(t[:4096], s[:4096], backend=backend)
    print(f"default backend: {backend} (warm-up {time.perf_counter() - t0:.1f} s, once per process)")

    def pair(label, backend):
        """A full sum pass, then a full statistics pass over the same bytes, back to back, so that a
        shared machine's load changes hit both sides alike."""
        t0 = time.perf_counter()
        tt.sum(), st_.sum()
        t_sum = time.perf_counter() - t0
        t0 = time.perf_counter()
        logit_stats(t, s, backend=backend)
        t_kern = time.perf_counter() - t0
        print(f"{label}: sum {nbytes / t_sum / 1e9:.2f} GB/s, KL+entropy+margin {backend} "
              f"{nbytes / t_kern / 1e9:.3f} GB/s ({n / t_kern:,.0f} rows/s) = {t_sum / t_kern:6.1%} of sum")
        return {"sum_gbs": nbytes / t_sum / 1e9, "gbs": nbytes / t_kern / 1e9, "rows_per_s": n / t_kern,
                "ratio": t_sum / t_kern}

    pairs = [pair(f"pair {rep + 1}", backend) for rep in range(args.pairs)]
    median = float(np.median([p["ratio"] for p in pairs]))
    print(f"KL+entropy+margin {backend}, median of {args.pairs} pairs: {median:6.1%} "
          f"of the sum's bandwidth  (target ≥ 25%)")
    compiled = None
    if backend != "compiled" and not args.skip_compiled:
        logit_stats(t[:4096], s[:4096], backend="compiled")  # compile outside the timing
        compiled = pair("for comparison", "compiled")

    scores, sec = scores_table(t, s, backend=backend)
    print(f"scoring statistics + top-5 soft labels (kdata.core.stats.disagreement, {n:,} rows): "
          f"{n / sec:,.0f} rows/s = {nbytes / sec / 1e9 / bw:6.1%} of sum")
    report = {"n": n, "c": c, "gb": nbytes / 1e9, "threads": args.threads, "backend": backend,
              "native": native.status().split(",")[0], "load": load,
              "sum_gbs": bw, "sum_best_gbs": nbytes / best / 1e9, "eager_rows": m, "eager_gbs": eager,
              "pairs": pairs, "median_ratio": median, "compiled": compiled, "disagreement_rows_per_s": n / sec,
              "disagreement_frac": nbytes / sec / 1e9 / bw, "methods": []}
    del t, s, tt, st_
    budget = int(0.3 * n)
    options = {}
    if "critic" in args.methods:
        sub = scores.slice(0, 2000)
        X, names = feature_matrix(sub, embedding=False)
        y = np.asarray(sub.column("agree").to_numpy(zero_copy_only=False), bool)
        crit = fit_critic(X, y, feature_names=names, recall=0.8)
        d = tempfile.mkdtemp(prefix="kdata-bench-critic-")
        crit.save(d)
        options["critic"] = {"path": d}
    print("\n| method | seconds | rows/s |\n|---|---:|---:|")
    for name in args.methods.split(","):
        t0 = time.perf_counter()
        sel = select(scores, methods=[name], budget=budget, seed=0, num_classes=c, options=options)
        sec = time.perf_counter() - t0
        assert sel.kept.sum() <= budget
        print(f"| {name} | {sec:.2f} | {n / sec:,.0f} |")
        report["methods"].append({"method": name, "seconds": sec, "rows_per_s": n / sec})
    report["seconds"], report["cpus"] = time.perf_counter() - t_start, os.cpu_count()
    report["command"] = "python benchmarks/select_speed.py" + "".join(
        " " + shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    md = markdown(report)
    print("\n" + md)
    if not args.no_write and (n, c, args.methods) == (1_000_000, 1000, DEFAULT_METHODS):
        runpy.run_path(str(HERE / "doc_tables.py"))["splice"]("select_speed", md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
