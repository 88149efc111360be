"""HARD generation: divergence gained, critic behaviour and speed, against a baseline in the same run.

    python benchmarks/hard.py                 # 150 parents from a kd3 curation of builtin:digits-web, K=1
    python benchmarks/hard.py --parents 60

Parents: a seeded random subset of the rows kept by ``kdata select --method kd3 --budget 0.3``.
Rows of the table (every KL re-measured by decoding the written PNGs and re-running both models):

* ``random``  — baseline: a random θ inside the same bounds, no optimisation (``steps=0``);
* ``hard``    — HARD with gradient ascent (the default configuration);
* ``search``  — HARD with the gradient-free random search (the fallback path).

For each: median KL(teacher‖student) of parents and generated rows and the ratio to the baseline,
the teacher-flip rate, the default critic's accept rate and samples/s. Then a sweep of the default
critic's threshold on the ``hard`` rows: accept rate and how often the teacher's prediction on an
accepted row equals the parent's true digit (``digits_web_truth``; junk parents left out).
"""

from __future__ import annotations

import os
import sys

# benchmarks/select.py is named like the stdlib module ``select``: keep this folder off the import path
if sys.path and os.path.abspath(sys.path[0] or ".") == os.path.dirname(os.path.abspath(__file__)):
    sys.path.pop(0)

import argparse  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import torch  # noqa: E402


def rescore_kl(images, teacher, student) -> np.ndarray:
    from kdata.augment.hard import decode_batch
    from kdata.core.stats import disagreement

    with torch.no_grad():
        zt, _ = teacher.forward(decode_batch(images, teacher))
        zs, _ = student.forward(decode_batch(images, student))
        return disagreement(zt, zs)["kl_ts"].numpy()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--parents", type=int, default=150)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(2)

    from kdata.pools.builtin import digits_web_truth
    from kdata.augment.hard import CRITIC_REJECT, FLIP, HardConfig, generate
    from kdata.models.spec import load_model
    from kdata.pipeline.config import RunOptions, SelectConfig
    from kdata.pipeline.run import run_select
    from kdata.dataset.writer import read_shards

    teacher, student = load_model("builtin:digits-teacher"), load_model("builtin:digits-student")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "curated"
        run_select(SelectConfig(method="kd3", budget="0.3"), out=str(out), opts=RunOptions(device="cpu"))
        curated = read_shards(out)
    rng = np.random.default_rng(args.seed)
    idx = np.sort(rng.choice(curated.num_rows, size=min(args.parents, curated.num_rows), replace=False))
    parents = curated.take(pa.array(idx))
    kl_par = rescore_kl(parents.column("image").to_pylist(), teacher, student)
    print(f"{parents.num_rows} parents, median KL on their images {np.median(kl_par):.3f}\n")

    runs = {"random": HardConfig(steps=0, seed=args.seed), "hard": HardConfig(seed=args.seed),
            "search": HardConfig(seed=args.seed, random_search=True)}
    rows, results = {}, {}
    for name, cfg in runs.items():
        t0 = time.perf_counter()
        res = generate(parents, teacher, student, config=cfg)
        secs = time.perf_counter() - t0
        every = pa.concat_tables([res.accepted, res.excluded.drop_columns(["reason", "parent_teacher_pred"])])
        kl = rescore_kl(every.column("image").to_pylist(), teacher, student)
        rows[name] = {"median_kl": float(np.median(kl)), "flip": res.info["teacher_flip_rate"],
                      "accept": res.info["critic_accept_rate"], "sps": every.num_rows / secs}
        results[name] = res
    base = rows["random"]
    print(f"{'run':8s} {'median KL':>10s} {'× random':>9s} {'flip rate':>10s} {'accept':>7s} "
          f"{'samples/s':>10s} {'× random':>9s}")
    for name, r in rows.items():
        print(f"{name:8s} {r['median_kl']:10.3f} {r['median_kl'] / base['median_kl']:9.2f} {r['flip']:10.3f} "
              f"{r['accept']:7.3f} {r['sps']:10.1f} {r['sps'] / base['sps']:9.2f}")

    # default critic threshold sweep on the HARD rows
    res = results["hard"]
    every = pa.concat_tables([res.accepted.append_column("reason", pa.nulls(res.accepted.num_rows, pa.string())),
                              res.excluded.drop_columns(["parent_teacher_pred"])])
    truth = digits_web_truth()
    true_label = dict(zip(truth.column("sample_id").to_pylist(), truth.column("true_label").to_pylist()))
    tl = np.array([true_label.get(p, -1) for p in every.column("parent_id").to_pylist()])
    pred = every.column("teacher_pred").to_numpy()
    score = np.nan_to_num(every.column("critic_score").to_numpy(zero_copy_only=False), nan=-1.0)
    flipped = np.array([r == FLIP for r in every.column("reason").to_pylist()])
    known = tl >= 0
    print(f"\ndefault critic on {len(every)} HARD rows ({int(flipped.sum())} teacher flips, "
          f"{int((np.array(every.column('reason').to_pylist()) == CRITIC_REJECT).sum())} critic rejects at 0.5)")
    print(f"{'threshold':>9s} {'accept':>7s} {'teacher = true digit (accepted)':>32s} {'(rejected)':>11s}")
    for thr in (0.0, 0.3, 0.5, 0.6, 0.7, 0.8):
        acc = (~flipped) & (score >= thr)
        rej = (~flipped) & ~acc
        a = f"{(pred[acc & known] == tl[acc & known]).mean():.3f}" if (acc & known).any() else "—"
        r = f"{(pred[rej & known] == tl[rej & known]).mean():.3f}" if (rej & known).any() else "—"  # none rejected
        print(f"{thr:9.1f} {acc.sum() / max(1, (~flipped).sum()):7.3f} {a:>32s} {r:>11s}")


if __name__ == "__main__":
    main()
