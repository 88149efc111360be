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

With the default parents and seed (150, 0) and without ``--no-write``, both tables are spliced into
``docs/benchmarks/hard.md`` (``benchmarks/doc_tables.py``).
"""

from __future__ import annotations

import os
import sys

# benchmarks/select.py is named like the stdlib module ``select``: keep this folder off the import path
if sys.path and os.path.abspath(sys.path[0] or ".") == os.path.dirname(os.path.abspath(__file__)):
    sys.path.pop(0)

import argparse  # noqa: E402
import runpy  # noqa: E402
import shlex  # noqa: E402
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


LABELS = {"random": "random augmentation", "hard": "**HARD (gradient, default)**",
          "search": "HARD random search (fallback)"}


def markdown(r: dict) -> str:
    """The docs block: how it was measured (parents, seed, cores, versions, seconds, command), the
    comparison table and the critic-threshold sweep."""
    base = r["rows"]["random"]
    head = (f"{r['parents']} parents (seed {r['seed']}) from `kdata select --method kd3 --budget 0.3` on "
            f"`builtin:digits-web`, K = 1; every KL re-measured on the written PNGs. torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads. Measured in {r['seconds']:.0f} s on {r['cpus']} CPU cores "
            f"(load average {r['load']:.1f} at the start) with:\n\n    {r['command']}\n")
    t1 = ["| run | median KL(t‖s) | × random | teacher flip rate | critic accept | samples/s |",
          "|---|---|---|---|---|---|", f"| parents | {r['parents_kl']:.3f} | | | | |"]
    for name, x in r["rows"].items():
        bold = "**" if name == "hard" else ""
        t1.append(f"| {LABELS[name]} | {bold}{x['median_kl']:.3f}{bold} | {bold}{x['median_kl'] / base['median_kl']:.2f}"
                  f"{bold} | {x['flip']:.3f} | {x['accept']:.3f} | {x['sps']:.1f} |")
    sw = r["sweep"]
    t2 = ["| threshold | accepted | teacher = true digit, accepted | teacher = true digit, rejected |",
          "|---|---|---|---|"]
    for row in sw["rows"]:
        thr = f"**{row['threshold']:.1f}**" if row["threshold"] == 0.5 else f"{row['threshold']:.1f}"
        t2.append(f"| {thr} | {row['accept']:.3f} | {row['acc_true']} | {row['rej_true']} |")
    mid = (f"\nThe default critic's threshold swept over the {sw['rows_total']} `hard` rows ({sw['flips']} teacher "
           f"flips, excluded whatever the threshold; {sw['rejects']} critic rejects at the default 0.5); "
           "\"teacher = true digit\" is how often the teacher's prediction on a row equals its parent's true "
           "digit (junk parents left out; — where no row is left):\n\n")
    return head + "\n" + "\n".join(t1) + "\n" + mid + "\n".join(t2) + "\n"


# long: the three generation runs, then the threshold sweep, in the order the docstring lists them
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--parents", type=int, default=150)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-write", action="store_true", help="do not write docs/benchmarks/hard.md")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    t_start, load = time.perf_counter(), os.getloadavg()[0]

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
    sweep = []
    for thr in (0.0, 0.3, 0.5, 0.6, 0.7, 0.8):
        acc = (~flipped) & (score >= thr)
        rej = (~flipped) & ~acc
        a = f"{(pred[acc & known] == tl[acc & known]).mean():.3f}" if (acc & known).any() else "—"
        r = f"{(pred[rej & known] == tl[rej & known]).mean():.3f}" if (rej & known).any() else "—"  # none rejected
        print(f"{thr:9.1f} {acc.sum() / max(1, (~flipped).sum()):7.3f} {a:>32s} {r:>11s}")
        sweep.append({"threshold": thr, "accept": acc.sum() / max(1, (~flipped).sum()), "acc_true": a,
                      "rej_true": r})
    report = {"parents": parents.num_rows, "seed": args.seed, "parents_kl": float(np.median(kl_par)),
              "rows": rows, "load": load, "cpus": os.cpu_count(), "seconds": time.perf_counter() - t_start,
              "sweep": {"rows": sweep, "rows_total": len(every), "flips": int(flipped.sum()),
                        "rejects": int((np.array(every.column("reason").to_pylist()) == CRITIC_REJECT).sum())},
              "command": "python benchmarks/hard.py" + "".join(" " + shlex.quote(a) for a in
                                                               (sys.argv[1:] if argv is None else argv))}
    md = markdown(report)
    print("\n" + md)
    if not args.no_write and (args.parents, args.seed) == (150, 0):
        runpy.run_path(str(Path(__file__).resolve().parent / "doc_tables.py"))["splice"]("hard", md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
