"""Quality benchmark: does curation make a better student than random data?

On ``builtin:digits-web`` (1,457 web-like rows: clean, label noise, shift, junk, duplicates) and
for budgets of 10%, 30% and 100% of the pool, distil ``builtin:digits-student`` with
``kdata.training.train`` on the rows each selection keeps and measure its accuracy on the clean
``builtin:digits-test`` (mean ± std over seeds; the seed drives the selection tie-breaks / random
draw and the training). Rows: random, every registered selection method, the default recipe, the
default recipe + HARD (when ``kdata.augment.hard`` imports) and the full pool; plus the teacher's own
accuracy. "gap closed" = (acc − random) / (teacher − random) at the same budget.

Scoring runs once (cached per pool unit); every selection is written by the curation core
(``kdata.pipeline.curate.finish``, as ``kdata select``), so the trainer reads real curated
datasets exactly as ``kdata train`` does.

    python benchmarks/quality.py            # full: 3 seeds, a few minutes on 2 cores
    python benchmarks/quality.py --quick    # 1 seed, budgets 10% and 30%, fewer epochs
"""

from __future__ import annotations

import sys
from pathlib import Path

# benchmarks/select.py would shadow the standard library's ``select`` module for scripts run from here
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse
import json
import os
import shlex
import tempfile
import time
from dataclasses import replace

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kdata.models.spec import load_model  # noqa: E402
from kdata.pipeline.config import RunOptions, SelectConfig  # noqa: E402
from kdata.pipeline.curate import Scored, finish  # noqa: E402
from kdata.pipeline.prepare import prepare, resolve_balance, resolve_methods  # noqa: E402
from kdata.scoring.score import score_pool  # noqa: E402
from kdata.training.evaluate import EvalSet
from kdata.training.train import TrainConfig, train  # noqa: E402

# methods that need inputs the benchmark cannot supply from the built-in pool and models
NEEDS_EXTRA = {"critic": "needs a fitted critic (kdata critic fit) trained on human accept/reject labels"}


def curate(prep, scores, quarantined, cfg: SelectConfig, out: Path) -> int:
    """Select with ``cfg`` over the scores and write the dataset into ``out`` through the curation core
    (``kdata.pipeline.curate.finish``, as ``kdata select``); returns the rows written."""
    run = replace(prep, cfg=cfg, methods=resolve_methods(cfg), balance=resolve_balance(cfg))
    report = finish(run, Scored(scores=scores, quarantined=quarantined), out=str(out))
    return report.counts["kept"] + report.counts.get("generated_kept", 0)


def rows_to_run(args) -> list[tuple[str, dict, str]]:
    """(row name, SelectConfig overrides, note)."""
    from kdata.selection.methods import available

    rows = [("random", {"method": "random"}, "")]
    for name, m in available().items():
        if name == "random":
            continue
        if name in NEEDS_EXTRA:
            rows.append((name, None, f"skipped: {NEEDS_EXTRA[name]}"))
            continue
        note = "reference = the built-in student (the method's default)" if name == "miniplm" else ""
        rows.append((name, {"method": name}, note))
    for name in ("random", "kd3", "rad"):
        rows.append((f"{name} + balance=class", {"method": name, "balance": "class"},
                     "budget split evenly over the teacher's predicted classes (`--balance class`)"))
    rows.append(("rad + balance=class + dedup=near", {"method": "rad", "balance": "class", "dedup": "near"},
                 "near-duplicates removed before the budget (`--dedup near`)"))
    steps_note = "equal compute: as many optimiser steps as the full pool (more epochs), not the same epochs"
    default_chain = ",".join(resolve_methods(SelectConfig()))
    default_note = f"chain: {default_chain}, balance: {resolve_balance(SelectConfig())}"
    for name, ov in (("random", {"method": "random"}), ("default recipe", {"method": "default"})):
        rows.append((f"{name} + equal steps", {**ov, "_equal_steps": True}, steps_note))
    rows.append(("default recipe", {"method": "default"}, default_note))
    try:
        import kdata.augment.hard

        rows.append((f"default + HARD (K={args.hard})", {"method": "default", "hard": args.hard},
                     "HARD rows are generated per kept row and added to the budget"))
    except ImportError:
        rows.append(("default + HARD", None, "skipped: kdata.augment.hard is not available"))
    return rows


def mean_std(xs):
    return (float(np.mean(xs)), float(np.std(xs))) if xs else (float("nan"), float("nan"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 seed, budgets 0.1 and 0.3, fewer epochs")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--budgets", default="0.1,0.3,1.0")
    ap.add_argument("--epochs", type=int, default=None, help="training epochs (default: the trainer's)")
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--alpha", type=float, default=None)
    ap.add_argument("--temperature", type=float, default=None)
    ap.add_argument("--loss", default=None)
    ap.add_argument("--reinit", action="store_true")
    ap.add_argument("--hard", type=int, default=1, help="HARD samples per kept row for the + HARD row")
    ap.add_argument("--only", default=None, help="comma list of row names to run (for tuning)")
    ap.add_argument("--no-write", action="store_true", help="print only; do not write the docs/results files")
    ap.add_argument("--md", default=None, help="also write the Markdown table to this file (docs/benchmarks/quality.md is always updated)")
    ap.add_argument("--json-out", default=str(ROOT / "benchmarks/results/quality.json"))
    args = ap.parse_args(argv)
    if args.quick:
        args.seeds, args.budgets = 1, "0.1,0.3"
    torch.set_num_threads(1)  # tiny model: one thread is fastest and fair on a shared machine
    budgets = [float(b) for b in args.budgets.split(",")]
    seeds = list(range(args.seeds))
    tc = TrainConfig(eval_every_epoch=False, device="cpu")
    over = {k: getattr(args, k) for k in ("epochs", "lr", "alpha", "temperature", "loss") if getattr(args, k) is not None}
    if args.quick and "epochs" not in over:
        over["epochs"] = max(4, tc.epochs // 2)
    tc = replace(tc, reinit=args.reinit, **over)

    t_start = time.perf_counter()
    base = SelectConfig(pool="builtin:digits-web")
    prep = prepare(base, opts=RunOptions(device="cpu"))
    scores, quarantined, _ = score_pool(prep.pool, prep.teacher, prep.student, config=prep.score_cfg, device="cpu")
    n_pool = scores.num_rows + len(quarantined)
    ev = EvalSet("builtin:digits-test", model=prep.student)
    teacher_acc = EvalSet("builtin:digits-test", model=prep.teacher).accuracy(prep.teacher)
    student_acc = ev.accuracy(load_model(base.student))
    print(f"teacher {teacher_acc:.4f}  untrained student {student_acc:.4f}  pool {n_pool}", flush=True)

    rows = rows_to_run(args)
    if args.only:
        keep = {s.strip() for s in args.only.split(",")}
        rows = [r for r in rows if r[0] in keep or r[0].split(" (")[0] in keep or r[0] == "random"]
    results: dict[str, dict] = {}
    work = Path(tempfile.mkdtemp(prefix="kdata-quality-"))

    def run_one(name, overrides, budget):
        accs, n_rows = [], []
        overrides = dict(overrides)
        equal_steps = overrides.pop("_equal_steps", False)
        for seed in seeds:
            cfg = replace(base, budget=str(budget), seed=seed, **overrides)
            out = work / f"{name.replace(' ', '_')}-{budget}-{seed}"
            n_rows.append(curate(prep, scores, quarantined, cfg, out))
            student = load_model(base.student)
            epochs = max(tc.epochs, round(tc.epochs * n_pool / n_rows[-1])) if equal_steps else tc.epochs
            log = train(student, out, config=replace(tc, seed=seed, epochs=epochs), eval_set=ev)
            accs.append(log["accuracy"])
        m, s = mean_std(accs)
        print(f"  {name:<28} budget {budget:>4}: {m:.4f} ± {s:.4f}  rows {int(np.mean(n_rows))}", flush=True)
        return {"accs": accs, "mean": m, "std": s, "rows": int(np.mean(n_rows))}

    full = run_one("full pool", {"method": "random"}, 1.0)  # the reference every budget is compared with
    for name, overrides, note in rows:
        results[name] = {"note": note, "by_budget": {}}
        if overrides is None:
            continue
        for b in budgets:
            if b >= 1.0 and not overrides.get("hard") and not overrides.get("dedup"):
                # every ranker keeps the whole pool at 100%: the same data as the full-pool row
                results[name]["by_budget"][str(b)] = {**full, "same_as_full": True}
                continue
            results[name]["by_budget"][str(b)] = run_one(name, overrides, b)
    results["full pool"] = {"note": "all 1,457 rows", "by_budget": {str(b): full for b in budgets}}
    for name, r in results.items():
        ref = "random + equal steps" if name.endswith("+ equal steps") else "random"  # same training protocol
        for b, v in r["by_budget"].items():
            rnd = results[ref]["by_budget"].get(b)
            if rnd and teacher_acc > rnd["mean"]:
                v = dict(v)
                v["gap_closed"] = (v["mean"] - rnd["mean"]) / (teacher_acc - rnd["mean"])
                r["by_budget"][b] = v
    seconds = time.perf_counter() - t_start
    cmd = "python benchmarks/quality.py" + ("" if argv is None and len(sys.argv) == 1 else
                                            " " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])))
    report = {"command": cmd, "seconds": seconds, "teacher_accuracy": teacher_acc,
              "student_accuracy_untrained": student_acc, "pool_rows": n_pool, "seeds": seeds,
              "budgets": budgets, "train_config": tc.__dict__, "rows": results,
              "default_chain": resolve_methods(SelectConfig()), "cpu_threads": torch.get_num_threads(),
              "cpus": os.cpu_count()}
    md = markdown(report)
    print(md)
    if not args.no_write:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(report, indent=2, default=str) + "\n")
        if args.md:
            Path(args.md).parent.mkdir(parents=True, exist_ok=True)
            Path(args.md).write_text(md)
        import runpy

        runpy.run_path(str(Path(__file__).with_name("doc_tables.py")))["splice"]("quality", md)
    import shutil

    shutil.rmtree(work, ignore_errors=True)
    return 0


def markdown(rep: dict) -> str:
    budgets = [str(b) for b in rep["budgets"]]
    head = "| training data | " + " | ".join(f"{float(b):.0%} of pool" for b in budgets) + " | note |"
    lines = [head, "|" + "---|" * (len(budgets) + 2)]
    for name, r in rep["rows"].items():
        cells = []
        for b in budgets:
            v = r["by_budget"].get(b)
            if not v:
                cells.append("—")
                continue
            gap = f" ({v['gap_closed']:+.0%} gap)" if "gap_closed" in v and not name.startswith("random") else ""
            same = " =full" if v.get("same_as_full") else ""
            cells.append(f"{v['mean']:.3f} ± {v['std']:.3f}{gap}{same}")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {r['note']} |")
    lines.append(f"| teacher (builtin:digits-teacher) | " + " | ".join(f"{rep['teacher_accuracy']:.3f}" for _ in budgets)
                 + " | the ceiling |")
    lines.append(f"| student before training | " + " | ".join(f"{rep['student_accuracy_untrained']:.3f}"
                                                              for _ in budgets) + " | builtin:digits-student |")
    tc = rep["train_config"]
    return (
        "## Quality: student accuracy by training data\n\n"
        f"Clean-test accuracy (`builtin:digits-test`, 400 images) of `builtin:digits-student` distilled on what "
        f"each selection keeps from `builtin:digits-web` ({rep['pool_rows']} rows), mean ± std over seeds "
        f"{rep['seeds']}; \"gap\" is the fraction of the random-to-teacher gap closed at the same budget. "
        f"\"=full\": a ranker at 100% keeps the whole pool, the same data as the full-pool row.\n\n"
        + "\n".join(lines) + "\n\n"
        f"Trainer: {tc['epochs']} epochs, lr {tc['lr']}, α {tc['alpha']}, T {tc['temperature']}, loss {tc['loss']}, "
        f"batch {tc['batch_size']}, augment {tc['augment']}, {'from scratch' if tc['reinit'] else 'from the built-in student weights'}. "
        f"Default recipe chain: `{','.join(rep['default_chain'])}`. "
        f"Measured in {rep['seconds']:.0f} s on {rep['cpus']} CPU cores with:\n\n"
        f"    {rep['command']}\n"
    )


if __name__ == "__main__":
    sys.exit(main())
