"""What each selection method keeps on ``builtin:digits-web``, against the ground truth.

    python benchmarks/precision.py            # 3 seeds, budgets 10% and 30%; updates the table in docs/benchmarks/precision.md
    python benchmarks/precision.py --seeds 1 --no-write   # one seed, print only (a smoke run)

For each seed s the web pool is rebuilt with ``digits_web(seed=s)`` (different corruptions,
label noise and duplicates), scored with the built-in teacher and student, and every method
selects with selection seed s. Against ``digits_web_truth(seed=s)``:

* precision — fraction of the kept rows that are good images with their true label
  (truth ∈ clean, near_dup, exact_dup);
* recall — fraction of all such good rows that were kept (bounded by the budget);
* junk / shift / label-noise / dup — fraction of the kept rows of that kind.

The critic is fitted per seed on 300 randomly chosen labelled rows of that pool (accept = not
junk and not shift: a user labelling a sample by eye), target recall 0.8.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

GOOD = ("clean", "near_dup", "exact_dup")
METHODS = ["random", "coverage", "teacher_confidence", "student_entropy", "disagreement", "kd3", "rad", "miniplm", "ddk",
           "critic", "critic,kd3"]


def run(seeds=(0, 1, 2), budgets=(0.1, 0.3), methods=METHODS):
    import pyarrow as pa
    import torch

    from kdata.pools.builtin import digits_web, digits_web_truth
    from kdata.selection.critic_model import feature_matrix, fit_critic
    from kdata.models.spec import load_model
    from kdata.scoring.score import ScoreConfig, score_table
    from kdata.selection.run import parse_budget, select

    torch.set_num_threads(1)
    teacher, student = load_model("builtin:digits-teacher"), load_model("builtin:digits-student")
    rows = {}
    for seed in seeds:
        pool = digits_web(seed=seed)
        truth = digits_web_truth(seed=seed).to_pandas().set_index("sample_id")
        scores, _ = score_table(pool, teacher, student, config=ScoreConfig())
        ids = scores.column("sample_id").to_pylist()
        tr = truth.loc[ids, "truth"].to_numpy()
        dom = pool.select(["sample_id", "domain"])
        # the critic: 300 labelled rows of this pool
        rng = np.random.default_rng(seed)
        lab = rng.choice(len(ids), size=300, replace=False)
        X, names = feature_matrix(scores.take(pa.array(lab)))
        y = ~np.isin(tr[lab], ["junk", "shift"])
        cdir = tempfile.mkdtemp(prefix="kdata-precision-critic-")
        fit_critic(X, y, feature_names=names, recall=0.8, seed=seed).save(cdir)
        options = {"critic": {"path": cdir}, "ddk": {"domains": dom}}
        good = np.isin(tr, GOOD)
        for frac in budgets:
            budget = parse_budget(frac, len(ids))
            for m in methods:
                sel = select(scores, methods=m.split(","), budget=budget, seed=seed, num_classes=10, options=options)
                k = tr[sel.kept]
                n = max(len(k), 1)
                rows.setdefault((m, frac), []).append({
                    "kept": len(k), "precision": np.isin(k, GOOD).sum() / n,
                    "recall": (sel.kept & good).sum() / good.sum(),
                    "junk": (k == "junk").sum() / n, "shift": (k == "shift").sum() / n,
                    "label_noise": (k == "label_noise").sum() / n,
                    "dup": np.isin(k, ("near_dup", "exact_dup")).sum() / n})
    return rows


def table(rows, seeds) -> str:
    lines = ["| method | budget | kept | precision | recall | junk | shift | label noise | dup |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for (m, frac), rs in rows.items():
        def f(key):
            v = np.array([r[key] for r in rs])
            return f"{v.mean():.3f} ± {v.std():.3f}" if len(v) > 1 else f"{v.mean():.3f}"
        kept = np.mean([r["kept"] for r in rs])
        lines.append(f"| {m} | {frac:.0%} | {kept:.0f} | {f('precision')} | {f('recall')} | {f('junk')} | "
                     f"{f('shift')} | {f('label_noise')} | {f('dup')} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--out", default=None, help="also write the Markdown to this file")
    ap.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks/precision.md alone")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    seeds = tuple(range(args.seeds))
    rows = run(seeds=seeds)
    md = table(rows, seeds)
    print(md)
    base = {}
    from kdata.pools.builtin import digits_web_truth

    for s in seeds:
        t = digits_web_truth(seed=s).to_pandas().truth
        for k in ("clean", "label_noise", "shift", "junk", "near_dup", "exact_dup"):
            base.setdefault(k, []).append((t == k).mean())
    pool_line = ", ".join(f"{k} {np.mean(v):.3f}" for k, v in base.items())
    doc = (f"### What each method keeps on builtin:digits-web\n\n"
           f"Generated by `python benchmarks/precision.py` ({len(seeds)} seeds: pool seed = selection seed; "
           f"mean ± std over seeds; {time.perf_counter() - t0:.0f} s).\n\n"
           f"Pool composition (mean over seeds): {pool_line}. Precision = fraction of kept rows that are good "
           f"images with their true label (clean, near_dup, exact_dup); recall = fraction of all good rows kept; "
           f"junk/shift/label noise/dup = fraction of kept rows of that kind. The critic is fitted per seed on 300 "
           f"labelled rows (accept = not junk, not shift), target recall 0.8; those rows are part of the evaluated "
           f"pool, and the critic is the only method here that sees ground truth.\n\n{md}\n")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(doc)
    if not args.no_write:
        import runpy

        runpy.run_path(str(Path(__file__).with_name("doc_tables.py")))["splice"]("precision", doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
