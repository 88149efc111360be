"""Which teacher signal finds the junk, shifted and mislabelled rows the default recipe cuts first?

    python benchmarks/tail_signals.py            # the four quality pools; updates docs/benchmarks/tail_signals.md
    python benchmarks/tail_signals.py --pool digits --no-write

The pools, teachers and students are the quality benchmark's (``benchmarks/quality.py``: digits-web,
the openclipart and icons web pools and digits2, built on first use). Each pool is scored once through
``kdata.scoring.score.score_pool`` and every signal the ``coverage`` sampler can rank by is compared
with the pool's ground truth: AUROC of the signal for each bad kind against the good rows (clean
and duplicates; 0.5 = no better than chance), and the composition of what the default recipe's
two-stage tail cut leaves at 10%, 30% and 50% kept. It also prints the label-noise estimate
η̂ = mean(max p_T − p_T(label)) next to the pool's true share of mislabelled and junk rows. No method reads the ground truth; this benchmark only judges them.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "benchmarks"), str(ROOT / "benchmarks" / "pools")]

GOOD = ("clean", "near_dup", "exact_dup")
BAD = {"junk": ("junk",), "shift": ("shift",), "label noise": ("label_noise",),
       "all three": ("junk", "shift", "label_noise")}


def auroc(bad: np.ndarray, score: np.ndarray) -> float:
    """Probability that a random bad row scores above a random good one (ties count half)."""
    from kdata.selection.tail import pct_rank

    r = pct_rank(score) * len(score)
    n_bad, n_good = int(bad.sum()), int((~bad).sum())
    return float((r[bad].sum() - n_bad * (n_bad + 1) / 2) / max(n_bad * n_good, 1))


def mahalanobis(emb: np.ndarray, pred: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Squared Mahalanobis distance to the predicted class's mean under one covariance shared by all
    classes (Lee et al., NeurIPS 2018), means and covariance over the ``ref`` rows, the covariance
    shrunk by Ledoit–Wolf. A reference the recipe does not use (measured, not adopted)."""
    from sklearn.covariance import ledoit_wolf

    emb = np.asarray(emb, dtype=np.float64)
    means = np.zeros((int(pred.max()) + 1, emb.shape[1]))
    for c in np.unique(pred):
        mine = pred == c
        means[c] = emb[mine & ref].mean(0) if (mine & ref).any() else emb[mine].mean(0)
    cov, _ = ledoit_wolf(emb[ref] - means[pred[ref]], assume_centered=True)
    z = np.linalg.solve(cov, (emb - means[pred]).T).T
    return np.einsum("ij,ij->i", z, emb - means[pred])


def signals(view, rows, left: np.ndarray) -> dict[str, np.ndarray]:
    """Every tail signal the coverage sampler knows, higher = more likely bad, and the Mahalanobis
    reference (its means and covariance over the more confident half of the rows in ``left``)."""
    from kdata.selection.tail import centroid_distance, label_free_score

    conf = view.col("teacher_conf")[rows].astype(np.float64)
    emb, pred = view.col("embedding")[rows], view.col("teacher_pred")[rows]
    return {"1 − p_T(label) (label disagreement)": 1.0 - view.col("teacher_label_prob")[rows].astype(np.float64),
            "1 − max p_T (low confidence)": 1.0 - conf,
            "kl_ts": view.col("kl_ts")[rows].astype(np.float64),
            "class-centroid distance": centroid_distance(emb, pred, conf),
            "label-free mean rank (no labels)": label_free_score(view, rows)[0],
            "Mahalanobis distance (reference, not used)": mahalanobis(emb, pred, left & (conf >= np.median(conf[left])))}


def label_stage_left(view, rows) -> np.ndarray:
    """Mask of the rows the default recipe's label stage leaves (``cut_tail``'s stage a)."""
    from kdata.selection.tail import label_noise_estimate, label_prob, label_tail_fraction, most_outlying, pct_rank

    lp = label_prob(view, rows)
    left = np.ones(len(rows), dtype=bool)
    if lp is None:
        return left
    has = np.isfinite(lp)
    n_cut = int(np.floor(label_tail_fraction(label_noise_estimate(view, rows, lp)) * has.sum()))
    disagree = np.zeros(len(rows))
    disagree[has] = pct_rank(1.0 - lp[has])
    left[most_outlying(disagree, np.flatnonzero(has), n_cut)] = False
    return left


def measure(name: str) -> dict | None:
    import pyarrow.parquet as pq
    import torch

    import quality
    from kdata.pipeline.config import RunOptions, SelectConfig
    from kdata.pipeline.prepare import prepare
    from kdata.scoring.score import score_pool
    from kdata.selection.tail import cut_tail
    from kdata.selection.methods.view import ScoreView

    torch.set_num_threads(1)
    bench = quality.load_bench(name)
    if bench is None:
        return None
    prep = prepare(SelectConfig(pool=bench.pool, teacher=bench.teacher, student=bench.student),
                   opts=RunOptions(device="cpu"))
    scores, _, _ = score_pool(prep.pool, prep.teacher, prep.student, config=prep.score_cfg, device="cpu")
    truth = pq.read_table(bench.truth, columns=["sample_id", "truth"]).to_pydict()
    kind_of = dict(zip(truth["sample_id"], truth["truth"]))
    view = ScoreView(scores, num_classes=prep.teacher.num_classes)
    rows = np.arange(len(view))
    kind = np.array([kind_of.get(s, "unknown") for s in view.sample_ids])
    good = np.isin(kind, GOOD)
    out = {"pool": name, "rows": len(rows), "label_noise_estimate": None,
           "true_label_issue_share": float(np.isin(kind, ("junk", "label_noise")).mean()),
           "base": {k: float(np.isin(kind, v).mean()) for k, v in BAD.items()}, "signals": {}, "cuts": {}}
    left = label_stage_left(view, rows)
    odd = np.isin(kind, ("junk", "shift"))
    for sig, score in signals(view, rows, left).items():
        out["signals"][sig] = {k: auroc(np.isin(kind, v)[good | np.isin(kind, v)], score[good | np.isin(kind, v)])
                               for k, v in BAD.items()}
        among = left & (good | odd)
        out["signals"][sig]["after label cut"] = auroc(odd[among], score[among])
    for r in (0.1, 0.3, 0.5):  # what the default recipe's two-stage cut leaves
        keep, _, info = cut_tail(view, rows, int(r * len(rows)), tail=None)
        out["label_noise_estimate"] = info["label_noise"]  # the same at every budget
        left = kind[keep]
        out["cuts"][r] = {"label_cut": info["label_cut"], "ood_cut": info["ood_cut"], "left": int(keep.sum()),
                          **{k: float(np.isin(left, v).mean()) for k, v in BAD.items()}}
    return out


def markdown(results: list[dict], seconds: float) -> str:
    lines = [f"Generated by `python benchmarks/tail_signals.py` in {seconds:.0f} s.", ""]
    for r in results:
        base = r["base"]
        lines += [f"### Pool `{r['pool']}` ({r['rows']} rows)", "",
                  f"Bad rows in the pool: junk {base['junk']:.2f}, shifted {base['shift']:.2f}, mislabelled "
                  f"{base['label noise']:.2f}. Label-noise estimate η̂ = {r['label_noise_estimate']:.2f} (true share "
                  f"of junk + mislabelled rows: {r['true_label_issue_share']:.2f}).", "",
                  "| signal (AUROC against the good rows) | junk | shifted | mislabelled | all three | "
                  "junk + shifted, rows the label cut leaves |",
                  "|---|---:|---:|---:|---:|---:|"]
        for sig, m in r["signals"].items():
            lines.append(f"| {sig} | {m['junk']:.3f} | {m['shift']:.3f} | {m['label noise']:.3f} | {m['all three']:.3f} | "
                         f"{m['after label cut']:.3f} |")
        lines += ["", "What the default recipe's tail cut leaves (before stratified sampling):", "",
                  "| kept ratio r | cut by label disagreement | then by the label-free score | rows left | "
                  "junk + shifted left | mislabelled left |", "|---:|---:|---:|---:|---:|---:|"]
        for b, c in r["cuts"].items():
            lines.append(f"| {float(b):.0%} | {c['label_cut']} | {c['ood_cut']} | {c['left']} | "
                         f"{c['junk'] + c['shift']:.2f} | {c['label noise']:.2f} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pool", choices=["digits", "openclipart", "icons", "digits2", "all"], default="all")
    ap.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks/tail_signals.md alone")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    names = ["digits", "openclipart", "icons", "digits2"] if args.pool == "all" else [args.pool]
    results = [r for r in map(measure, names) if r is not None]
    md = markdown(results, time.perf_counter() - t0)
    print(md)
    if not args.no_write and args.pool == "all":
        import runpy

        done = runpy.run_path(str(ROOT / "benchmarks" / "doc_tables.py"))["splice"]("tail_signals", md)
        print("updated docs/benchmarks/tail_signals.md" if done else
              "docs/benchmarks/tail_signals.md has no bench markers: not updated", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
