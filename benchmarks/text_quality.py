"""Text quality benchmark: does a curated subset of ``builtin:text-web`` distil a better LM student
than a random subset of the same size?

For each budget (10%, 30%), method (``default`` recipe, ``miniplm``, ``random``) and seed, the subset is
selected by ``kdata.pipeline.run.run_select`` (exactly ``kdata select``, with the built-in text teacher,
student and reference LMs; scores are computed once and cached) and ``builtin:text-student`` is
distilled on it by ``kdata.training.text.train_text`` (the trainer's defaults: per-token top-k KL with
the leftover bucket + CE), then measured by perplexity on the clean held-out ``builtin:text-test``
(lower is better). The seed drives the selection's random choices and the training order, so method
and random at one seed are paired. Printed per cell: mean ± std over seeds, the paired difference
to random with a 95% t-interval, and the share of kept rows by kind (the pool's ``source``).

    python benchmarks/text_quality.py --quick     # smoke: seeds 0–1, 10% and 30%, default vs random; writes nothing
    python benchmarks/text_quality.py             # full: 3 seeds, default, miniplm and random

Unless ``--quick`` or ``--no-write``, the table is spliced into ``docs/benchmarks/text_quality.md``
(``benchmarks/doc_tables.py``).
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]  # benchmarks/select.py shadows select

import argparse  # noqa: E402
import collections  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import runpy  # noqa: E402
import shlex  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(HERE.parent))

T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="seeds 0–1, methods default and random")
    p.add_argument("--seeds", type=int, default=None, help="number of seeds (default 3; --quick 2)")
    p.add_argument("--budgets", default="0.1,0.3", help="comma-separated fractions of the pool")
    p.add_argument("--methods", default=None, help="comma-separated (default: default,miniplm,random; --quick: "
                                                   "default,random)")
    p.add_argument("--epochs", type=int, default=None, help="student epochs (default: the trainer's)")
    p.add_argument("--json", default=None, metavar="FILE", help="also write every run's numbers to FILE")
    p.add_argument("--no-write", action="store_true", help="do not write docs/benchmarks/text_quality.md")
    return p.parse_args(argv)


def one_run(method: str, budget: str, seed: int, *, work: Path, epochs: int | None) -> dict:
    """Select with ``method`` at ``budget`` and ``seed``, distil the student on it, measure it."""
    import pyarrow.parquet as pq

    from kdata.pipeline.config import RunOptions
    from kdata.pipeline.demo_text import STUDENT, text_config
    from kdata.pipeline.run import run_select
    from kdata.training.text import TextTrainConfig, train_text

    out = work / f"{method}-{budget}-{seed}"
    report = run_select(text_config(budget=budget, seed=seed, method=method), out=str(out),
                        opts=RunOptions(device="cpu"))
    kinds = collections.Counter(pq.read_table(out / "data", columns=["source"]).column("source").to_pylist())
    cfg = TextTrainConfig(seed=seed, device="cpu", **({"epochs": epochs} if epochs else {}))
    log = train_text(shards=str(out), student=STUDENT, eval="builtin:text-test", config=cfg, out=work / f"{out.name}-s")
    return {"method": method, "budget": budget, "seed": seed, "kept": report.counts["kept"],
            "ppl_before": log["perplexity_before"], "ppl": log["perplexity_after"], "steps": log["steps"],
            "kinds": dict(kinds), "seconds": log["seconds"]}


def interval(diffs: list[float]) -> str:
    """mean ± half-width of a 95% t-interval over seeds (``n/a`` with one seed)."""
    d = np.asarray(diffs, dtype=float)
    if len(d) < 2:
        return f"{d.mean():+.2f} (n/a)"
    half = T975.get(len(d) - 1, 1.96) * d.std(ddof=1) / math.sqrt(len(d))
    return f"{d.mean():+.2f} ± {half:.2f}"


def table(runs: list[dict], *, budgets: list[str], methods: list[str]) -> list[str]:
    """Markdown rows: budget, method, rows, perplexity mean ± std, paired Δ to random, junk share kept."""
    lines = ["| budget | method | rows | test perplexity (mean ± std) | Δ vs random (95% CI) | junk kept | "
             "near-dup kept |", "|---|---|---|---|---|---|---|"]
    for b in budgets:
        rand = {r["seed"]: r["ppl"] for r in runs if r["budget"] == b and r["method"] == "random"}
        for m in methods:
            cell = [r for r in runs if r["budget"] == b and r["method"] == m]
            if not cell:
                continue
            ppl = np.array([r["ppl"] for r in cell])
            diff = interval([r["ppl"] - rand[r["seed"]] for r in cell if r["seed"] in rand]) if m != "random" else "—"
            kept = sum(r["kept"] for r in cell)
            junk = sum(r["kinds"].get("junk", 0) for r in cell) / kept
            near = sum(r["kinds"].get("near_duplicate", 0) for r in cell) / kept
            sd = ppl.std(ddof=1) if len(ppl) > 1 else 0.0
            lines.append(f"| {float(b):.0%} | {m} | {cell[0]['kept']} | {ppl.mean():.2f} ± {sd:.2f} | {diff} | "
                         f"{junk:.1%} | {near:.1%} |")
    return lines


def markdown(report: dict) -> str:
    """The docs block: setup line (seeds, cores, time, command) and the table."""
    runs = report["runs"]
    head = (f"Pool `builtin:text-web` → student `builtin:text-student`, perplexity on `builtin:text-test` "
            f"(lower is better; the teacher {report['teacher']:.1f}, the student before training "
            f"{runs[0]['ppl_before']:.1f}). Seeds {report['seeds']}; {min(r['steps'] for r in runs)}–"
            f"{max(r['steps'] for r in runs)} optimiser steps per run ({report['epochs']} epochs). Measured in "
            f"{report['seconds']:.0f} s on {report['cpus']} CPU cores with:\n\n    {report['command']}\n\n"
            "Δ is the method's perplexity minus random's at the same seed (negative = the method is better), "
            "mean ± half-width of a 95% t-interval over seeds.\n")
    return head + "\n" + "\n".join(table(runs, budgets=report["budgets"], methods=report["methods"])) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    from kdata.core.threads import one_thread
    from kdata.pipeline.demo_text import teacher_perplexity
    from kdata.training.text import TextTrainConfig

    seeds = list(range(args.seeds or (2 if args.quick else 3)))
    methods = (args.methods or ("default,random" if args.quick else "default,miniplm,random")).split(",")
    budgets = args.budgets.split(",")
    t0 = time.perf_counter()
    runs = []
    with one_thread(), tempfile.TemporaryDirectory(prefix="kdata-text-quality-") as tmp:
        for b in budgets:
            for seed in seeds:
                for m in methods:
                    c0 = time.perf_counter()
                    r = one_run(m, b, seed, work=Path(tmp), epochs=args.epochs)
                    runs.append(r)
                    print(f"  {m:8s} budget {b} seed {seed}: {r['kept']} rows, perplexity {r['ppl_before']:.1f} → "
                          f"{r['ppl']:.1f} ({r['steps']} steps, training {r['seconds']:.0f}s, cell "
                          f"{time.perf_counter() - c0:.0f}s)", file=sys.stderr, flush=True)
        teacher = teacher_perplexity()
    cmd = "python benchmarks/text_quality.py" + "".join(" " + shlex.quote(a) for a in
                                                        (sys.argv[1:] if argv is None else argv))
    report = {"command": cmd, "seconds": time.perf_counter() - t0, "seeds": seeds, "budgets": budgets,
              "methods": methods, "cpus": os.cpu_count(), "epochs": args.epochs or TextTrainConfig().epochs,
              "teacher": teacher, "runs": runs}
    md = markdown(report)
    print(md)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    if not (args.quick or args.no_write):
        runpy.run_path(str(HERE / "doc_tables.py"))["splice"]("text_quality", md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
