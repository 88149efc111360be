"""Quality benchmark: does a curated subset train a better student than a random subset of the same size?

Four pools, each with its own teacher, student and clean held-out test split:

* ``digits`` — ``builtin:digits-web`` (1,457 rows), ``builtin:digits-teacher/-student``, ``builtin:digits-test``;
* ``openclipart`` — real clip art from Debian's ``openclipart-png`` made into a webly collected pool, with a
  teacher and student trained on separate clean splits (``benchmarks/pools/openclipart.py``);
* ``icons`` — real icons from Debian's ``oxygen-icon-theme``, their category folders as classes, made into a
  pool the same way (``benchmarks/pools/icons.py``);
* ``digits2`` — scikit-learn's digits split again with another seed, the same kinds of noise as
  ``builtin:digits-web`` in other proportions, a teacher and a (weak) student trained by the script
  (``benchmarks/pools/digits2.py``): a check on a pool the recipe was not tuned on.

The two Debian pools are built and cached on first use and skipped with one line where apt is unavailable.

For every pool, method, budget (10%, 30%, 50% of the pool) and seed, the selection is written by the
curation core (``kdata.pipeline.curate.finish``, exactly as ``kdata select``) and the pool's student is
distilled on it with ``kdata.training.train.train`` (the trainer's defaults, α chosen by the kept
fraction), then measured on the clean test split. The seed drives the selection's random choices and the
training, so method and random at the same seed are paired. Two protocols:

* ``epochs`` — every set trains for the same epochs (a small set gets fewer optimiser steps);
* ``steps`` — every set trains for as many optimiser steps as the **full pool** gets in its epochs
  (``--steps`` of the trainer): equal compute, the comparison of Ben-Baruch et al. and the issue's
  "default at 30% ≥ full pool". Each such run costs one full-pool training, so by default only
  ``--steps-methods`` (random and the default recipe) run it.

Printed per cell: mean ± std over seeds and the paired difference to random (same seed) with a 95%
t-interval over seeds; and a precision table: the fraction of kept rows that are junk or shifted
(ground truth from each pool's truth table; selection never reads it). An **oracle** row
(``--no-oracle`` leaves it out) is a reference, not a method: random among the rows the ground truth
calls good (clean and duplicates), as many as every method keeps, trained with the same α and both
protocols — how much a perfect junk/shift/label-noise filter would gain on that pool. ``--hard-rows``
adds two more references: the oracle less the 30% of its rows with the highest teacher–student KL
(the rows the student has most to learn from), and less the 30% with the lowest. ``--swap-noisy``
adds the default's own kept set with its junk, shifted and mislabelled rows exchanged for good rows
it did not keep: what a perfect tail cut would add to the recipe. ``--noise-kinds`` adds the oracle
with every row of one noisy kind let in (mislabelled, shifted or junk): what that kind costs a
distilled student. ``benchmarks/quality_refs.py`` runs them all and writes their page.

    python benchmarks/quality.py --quick --pool all     # smoke: 1 seed, 10% and 30%, 4 epochs
    python benchmarks/quality.py --pool all --jobs 4    # full: 5 seeds; writes docs/benchmarks/quality.md
"""

from __future__ import annotations

import sys
from pathlib import Path

# a script here named like a standard-library module (a select.py once) would shadow it for every script
HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import shlex  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import replace  # noqa: E402

import numpy as np  # noqa: E402

ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE / "pools"))

NEEDS_EXTRA = {"critic": "needs a fitted critic (kdata critic fit) trained on human accept/reject labels"}
BAD_KINDS = ("junk", "shift")
GOOD_KINDS = ("clean", "near_dup", "exact_dup")
POOLS = ("digits", "openclipart", "icons", "digits2")
ORACLE = "oracle (good rows only)"  # a reference, not a method: it reads the ground truth
# --hard-rows: the oracle without the 30% of its good rows where the student disagrees most with the
# teacher (highest kl_ts), or least — what the informative "hard" rows are worth on a pool
NO_HARDEST = "oracle without its hardest 30%"
NO_EASIEST = "oracle without its easiest 30%"
# --swap-noisy: the default recipe's own kept set with every junk, shifted and mislabelled row replaced
# by a good row it did not keep (nor reject as a duplicate) — what a perfect tail cut would add to it
SWAPPED = "default, noisy rows swapped for good"
# --noise-kinds: random among the good rows *and* every row of one noisy kind — what that kind of noise
# costs a distilled student, against the oracle at the same size
WITH_KIND = {"label_noise": "oracle + mislabelled rows", "shift": "oracle + shifted rows", "junk": "oracle + junk rows"}
REFERENCES = {ORACLE: None, NO_HARDEST: "hardest", NO_EASIEST: "easiest", SWAPPED: "swapped",
              **{name: f"with-{kind}" for kind, name in WITH_KIND.items()}}
HARD_SHARE = 0.3
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def parse_args(argv=None, *, description: str | None = None, extend=None) -> argparse.Namespace:
    """The options (``extend(parser)``: a script built on this one adds its own; ``description``: its doc)."""
    ap = argparse.ArgumentParser(description=description or __doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    if extend is None:
        ap.add_argument("--pool", choices=[*POOLS, "all"], default="all")
    else:
        extend(ap)
        ap.set_defaults(pool="all")
    ap.add_argument("--quick", action="store_true",
                    help="smoke: 1 seed, budgets 0.1 and 0.3, methods random and default, 4 epochs; writes nothing")
    ap.add_argument("--seeds", type=int, default=None, help="seeds 0..N-1 (default: 5; --quick: 1)")
    ap.add_argument("--budgets", default=None,
                    help="fractions of the pool (default: 0.1,0.3,0.5; --quick: 0.1,0.3); the full pool always runs")
    ap.add_argument("--methods", default="auto",
                    help="comma list; auto: random, default and every registered method that applies")
    ap.add_argument("--steps-methods", default="random,default",
                    help="methods also trained with equal optimiser steps (all: every method)")
    ap.add_argument("--protocols", default="epochs,steps", help="epochs, steps or both")
    ap.add_argument("--no-oracle", dest="oracle", action="store_false",
                    help="leave out the oracle reference (random among the rows the ground truth calls good)")
    ap.add_argument("--hard-rows", action="store_true",
                    help="two more references: the oracle without the 30%% of its rows with the highest "
                         "teacher-student KL, and without the 30%% with the lowest (what hard rows are worth)")
    ap.add_argument("--swap-noisy", action="store_true",
                    help="one more reference: the default's kept set with its junk, shifted and mislabelled rows "
                         "replaced by good rows it did not keep (what a perfect tail cut would add)")
    ap.add_argument("--noise-kinds", action="store_true",
                    help="three more references: random among the good rows and every mislabelled (or shifted, "
                         "or junk) row, as many rows as the others keep (what each kind of noise costs)")
    ap.add_argument("--epochs", type=int, default=None, help="training epochs (default: the trainer's)")
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--alpha", type=float, default=None, help="fixed KD weight (default: the trainer's rule)")
    ap.add_argument("--temperature", type=float, default=None)
    ap.add_argument("--loss", default=None)
    ap.add_argument("--reinit", action="store_true")
    ap.add_argument("--jobs", type=int, default=1,
                    help="pools measured in parallel processes (2 halves the time of --pool all on a quiet machine)")
    ap.add_argument("--json", action="store_true", help="print every cell as one JSON object on stdout")
    ap.add_argument("--no-write", action="store_true", help="do not write docs/benchmarks/quality.md or results")
    ap.add_argument("--json-out", default=str(ROOT / "benchmarks/results/quality.json"))
    ap.add_argument("--clean", action="store_true",
                    help="each pool without its noisy rows (ground truth: clean rows and duplicates only); "
                         "random and the default; run by benchmarks/quality_clean.py")
    ap.add_argument("--clean-only", action="store_true",
                    help="with --clean: the clean rows alone (the duplicates dropped too: they copy noisy "
                         "rows as well, wrong labels included)")
    args = ap.parse_args(argv)
    if args.clean:
        args.oracle = False
        args.methods = "random,default" if args.methods == "auto" else args.methods
    if args.quick:
        args.no_write, args.oracle = True, False
        args.methods = "random,default" if args.methods == "auto" else args.methods
        args.epochs = args.epochs or 4
    args.seeds = args.seeds or (1 if args.quick else 5)
    args.budgets = args.budgets or ("0.1,0.3" if args.quick else "0.1,0.3,0.5")
    return args


def say(*parts) -> None:
    print(*parts, file=sys.stderr, flush=True)


def load_bench(name: str):
    """The pool's Bench record (``name``: a module of ``benchmarks/pools``, or ``module:variant``), or None
    (with a printed reason) when it cannot be built here."""
    import importlib

    from webpool import Unavailable

    module, _, variant = name.partition(":")  # "digits_mix:junk": one variant of a pool module
    log = lambda *a, **k: say(*a)  # noqa: E731
    try:
        build = importlib.import_module(module).build
        return build(variant, log=log) if variant else build(log=log)
    except Unavailable as exc:
        say(str(exc))
        return None


def method_list(args, prep) -> tuple[list[str], dict[str, str]]:
    """(methods to run, skipped method → why)."""
    from kdata.selection.methods import available

    if args.methods != "auto":
        return [m.strip() for m in args.methods.split(",") if m.strip()], {}
    names = ["random", "default"] + sorted(m for m in available() if m not in ("random", *NEEDS_EXTRA))
    return names, {m: NEEDS_EXTRA[m] for m in NEEDS_EXTRA if m in available()}


class PoolRun:
    """One pool scored once; selections written through the curation core; students trained on them."""

    def __init__(self, bench, tc, work: Path, *, clean: tuple[str, ...] = ()):
        import pyarrow as pa
        import pyarrow.parquet as pq

        from kdata.models.spec import load_model
        from kdata.pipeline.config import RunOptions, SelectConfig
        from kdata.pipeline.prepare import prepare
        from kdata.scoring.score import score_pool
        from kdata.training.evaluate import EvalSet

        self.bench, self.tc, self.work = bench, tc, work
        self.base = SelectConfig(pool=bench.pool, teacher=bench.teacher, student=bench.student)
        self.prep = prepare(self.base, opts=RunOptions(device="cpu"))
        self.scores, self.quarantined, _ = score_pool(self.prep.pool, self.prep.teacher, self.prep.student,
                                                      config=self.prep.score_cfg, device="cpu")
        self.n_pool = self.scores.num_rows + len(self.quarantined)
        self.eval = EvalSet(bench.eval, model=self.prep.student)
        self.teacher_acc = EvalSet(bench.eval, model=self.prep.teacher).accuracy(self.prep.teacher)
        self.student_acc = self.eval.accuracy(load_model(bench.student))
        truth = pq.read_table(bench.truth, columns=["sample_id", "truth"]).to_pydict()
        self.kind = dict(zip(truth["sample_id"], truth["truth"]))
        if clean:  # the pool without its noise: only the rows of these ground-truth kinds
            ids = self.scores.column("sample_id").to_pylist()
            self.scores = self.scores.filter(pa.array([self.kind.get(i) in clean for i in ids]))
            self.quarantined, self.n_pool = [], self.scores.num_rows
            kept = set(self.scores.column("sample_id").to_pylist())
            self.kind = {i: k for i, k in self.kind.items() if i in kept}
        self.base_rates = {k: float(np.mean([v == k for v in self.kind.values()])) for k in set(self.kind.values())}

    def curate(self, method: str, budget: float, seed: int) -> tuple[Path, dict]:
        """Write the selection; (its directory, what it kept: rows and the fractions of each bad kind)."""
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        from kdata.pipeline.curate import Scored, finish
        from kdata.pipeline.prepare import resolve_balance, resolve_methods

        from kdata.selection.run import parse_budget

        scores, quarantined = self.scores, self.quarantined
        if method == SWAPPED:
            scores = self.swapped(budget, seed)
            cfg = replace(self.base, method="random", budget=str(scores.num_rows), seed=seed)
            quarantined = []
        elif method in REFERENCES:  # random among the rows the ground truth calls good (+ one noisy kind)
            ids = scores.column("sample_id").to_pylist()
            ref = REFERENCES[method] or ""
            kinds = GOOD_KINDS + ((ref.removeprefix("with-"),) if ref.startswith("with-") else ())
            good = np.array([self.kind.get(i) in kinds for i in ids])
            if ref in ("hardest", "easiest"):  # less the good rows with the highest (or lowest) teacher-student KL
                from kdata.selection.tail import pct_rank

                rank = np.zeros(len(ids))
                rank[good] = pct_rank(scores.column("kl_ts").to_numpy(zero_copy_only=False)[good])
                good &= (rank <= 1 - HARD_SHARE) if ref == "hardest" else (rank > HARD_SHARE)
            scores, quarantined = scores.filter(pa.array(good)), []
            count = min(parse_budget(str(budget), self.n_pool), scores.num_rows)
            cfg = replace(self.base, method="random", budget=str(count), seed=seed)
        else:
            cfg = replace(self.base, method=method, budget=str(budget), seed=seed)
        run = replace(self.prep, cfg=cfg, methods=resolve_methods(cfg), balance=resolve_balance(cfg))
        tag = f"reference-{REFERENCES[method] or 'oracle'}" if method in REFERENCES else method
        out = self.work / f"{self.bench.name}-{tag}-{budget}-{seed}"
        if not (out / "manifest.json").is_file():
            finish(run, Scored(scores=scores, quarantined=quarantined), out=str(out))
        dec = pq.read_table(out / "decisions.parquet", columns=["sample_id", "decision"])
        kept = dec.filter(pc.equal(dec.column("decision"), "kept")).column("sample_id").to_pylist()
        kinds = [self.kind.get(i, "unknown") for i in kept]
        n = max(len(kinds), 1)
        return out, {"rows": len(kept), "junk_shift": sum(k in BAD_KINDS for k in kinds) / n,
                     "junk": kinds.count("junk") / n, "shift": kinds.count("shift") / n,
                     "label_noise": kinds.count("label_noise") / n}

    def swapped(self, budget: float, seed: int):
        """The scores of the default's kept rows at (budget, seed), its noisy rows (not clean, not a
        duplicate) exchanged for as many good rows drawn at random among those it neither kept nor
        rejected as duplicates."""
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        out, _ = self.curate("default", budget, seed)
        dec = pq.read_table(out / "decisions.parquet", columns=["sample_id", "decision", "reason"]).to_pydict()
        kept = {i for i, d in zip(dec["sample_id"], dec["decision"]) if d == "kept"}
        dups = {i for i, r in zip(dec["sample_id"], dec["reason"]) if (r or "").startswith("duplicate")}
        noisy = sorted(i for i in kept if self.kind.get(i) not in GOOD_KINDS)
        spare = sorted(i for i in self.scores.column("sample_id").to_pylist()
                       if self.kind.get(i) in GOOD_KINDS and i not in kept and i not in dups)
        rng = np.random.default_rng(seed)
        extra = rng.choice(np.array(spare, dtype=object), min(len(noisy), len(spare)), replace=False) if spare else []
        chosen = (kept - set(noisy)) | set(extra)
        return self.scores.filter(pc.is_in(self.scores.column("sample_id"), value_set=pa.array(sorted(chosen))))

    def train(self, out: Path, seed: int, steps: int = 0, *, kept_rows: int | None = None) -> dict:
        """Distil the student on the selection at ``out``. ``kept_rows`` (the oracle, whose manifest
        counts only the good rows): α from kept_rows / the pool's rows, as every method gets it."""
        from kdata.models.spec import load_model
        from kdata.training.budget import alpha_for_fraction
        from kdata.training.train import train

        cfg = replace(self.tc, seed=seed, steps=steps)
        if kept_rows is not None and cfg.alpha is None:
            cfg = replace(cfg, alpha=alpha_for_fraction(kept_rows / self.n_pool))
        log = train(load_model(self.bench.student), out, config=cfg, eval_set=self.eval)
        return {"accuracy": log["accuracy"], "epochs": log["epochs"], "steps": log["steps"],
                "alpha": log["alpha"]["value"], "train_seconds": round(log["seconds"], 2)}


def run_pool(bench, args, tc, work: Path) -> dict:
    """Every cell of one pool: full pool per seed, then methods × budgets × seeds × protocols."""
    t0 = time.perf_counter()
    kinds = (("clean",) if args.clean_only else GOOD_KINDS) if args.clean else ()
    pr = PoolRun(bench, tc, work, clean=kinds)
    methods, skipped = method_list(args, pr.prep)
    budgets = [float(b) for b in args.budgets.split(",")]
    protocols = [p.strip() for p in args.protocols.split(",")]
    steps_methods = methods if args.steps_methods == "all" else args.steps_methods.split(",")
    refs = ([ORACLE] if args.oracle else []) + ([NO_HARDEST, NO_EASIEST] if args.hard_rows else []) \
        + ([SWAPPED] if args.swap_noisy else []) + (list(WITH_KIND.values()) if args.noise_kinds else [])
    methods, steps_methods = [*methods, *refs], [*steps_methods, *refs]
    say(f"[{bench.name}] teacher {pr.teacher_acc:.4f}  student before training {pr.student_acc:.4f}  "
        f"pool {pr.n_pool} rows  (scored in {time.perf_counter() - t0:.0f}s)")
    cells, full_steps = [], None
    for seed in range(args.seeds):
        out, kept = pr.curate("random", 1.0, seed)
        res = pr.train(out, seed)
        full_steps = res["steps"]
        cells.append({"pool": bench.name, "method": "full pool", "budget": 1.0, "seed": seed, "protocol": "epochs",
                      **kept, **res})
        say(f"[{bench.name}] full pool seed {seed}: {res['accuracy']:.4f} ({res['steps']} steps)")
    for method in methods:
        for budget in budgets:
            for seed in range(args.seeds):
                try:
                    out, kept = pr.curate(method, budget, seed)
                except Exception as exc:  # a method that does not apply to this pool: recorded, not fatal
                    skipped[method] = str(exc).splitlines()[0][:200]
                    break
                for protocol in protocols:
                    if protocol == "steps" and method not in steps_methods:
                        continue
                    res = pr.train(out, seed, steps=full_steps if protocol == "steps" else 0,
                                   kept_rows=kept["rows"] if method in REFERENCES else None)
                    cells.append({"pool": bench.name, "method": method, "budget": budget, "seed": seed,
                                  "protocol": protocol, **kept, **res})
                    say(f"[{bench.name}] {method:<18} {budget:>4} seed {seed} {protocol:<6}: {res['accuracy']:.4f}  "
                        f"rows {kept['rows']}  junk+shift {kept['junk_shift']:.2f}  α {res['alpha']}")
    return {"name": bench.name + (" (clean rows only)" if args.clean and args.clean_only else ""),
            "pool": bench.pool, "eval": bench.eval, "teacher": bench.teacher,
            "student": bench.student, "teacher_accuracy": pr.teacher_acc, "student_accuracy_before": pr.student_acc,
            "pool_rows": pr.n_pool, "eval_rows": len(pr.eval), "base_rates": pr.base_rates, "full_steps": full_steps,
            "skipped": skipped, "cells": cells, "seconds": time.perf_counter() - t0, "info": bench.info}


def run_named(name: str, args, tc) -> dict | None:
    """One pool end to end in this process (also the unit of ``--jobs``); None when the pool is unavailable."""
    import torch

    torch.set_num_threads(1)  # tiny models: one thread is fastest and fair on a shared machine
    work = Path(tempfile.mkdtemp(prefix="kdata-quality-" + "".join(c if c.isalnum() else "-" for c in name) + "-"))
    try:
        bench = load_bench(name)
        return None if bench is None else run_pool(bench, args, tc, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_all(names: list[str], args, tc) -> list[dict]:
    if args.jobs <= 1 or len(names) == 1:
        return [r for r in (run_named(n, args, tc) for n in names) if r is not None]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=min(args.jobs, len(names)),
                             mp_context=multiprocessing.get_context("spawn")) as ex:
        return [r for r in ex.map(run_named, names, [args] * len(names), [tc] * len(names)) if r is not None]


def interval(diffs: list[float]) -> tuple[float, float | None]:
    """(mean, half-width of the 95% t-interval) of paired differences; None with one seed."""
    d = np.asarray(diffs, dtype=float)
    if len(d) < 2:
        return float(d.mean()), None
    t = T975.get(len(d) - 1, 1.96)
    return float(d.mean()), float(t * d.std(ddof=1) / math.sqrt(len(d)))


def summarise(pool: dict) -> list[dict]:
    """One row per (method, budget, protocol): mean ± std, paired difference to random, junk+shift kept."""
    by: dict[tuple, list[dict]] = {}
    for c in pool["cells"]:
        by.setdefault((c["method"], c["budget"], c["protocol"]), []).append(c)
    rows = []
    for (method, budget, protocol), cs in by.items():
        accs = [c["accuracy"] for c in cs]
        row = {"method": method, "budget": budget, "protocol": protocol, "n": len(cs), "mean": float(np.mean(accs)),
               "std": float(np.std(accs, ddof=1)) if len(accs) > 1 else 0.0, "rows": float(np.mean([c["rows"] for c in cs])),
               "junk_shift": float(np.mean([c["junk_shift"] for c in cs])),
               "label_noise": float(np.mean([c["label_noise"] for c in cs]))}
        ref = {c["seed"]: c["accuracy"] for c in by.get(("random", budget, protocol), [])}
        if budget >= 1.0:
            ref = {c["seed"]: c["accuracy"] for c in by.get(("full pool", 1.0, "epochs"), [])}
        paired = [c["accuracy"] - ref[c["seed"]] for c in cs if c["seed"] in ref]
        if paired and method not in ("random", "full pool"):
            row["diff"], row["ci"] = interval(paired)
        full = {c["seed"]: c["accuracy"] for c in by.get(("full pool", 1.0, "epochs"), [])}
        vs_full = [c["accuracy"] - full[c["seed"]] for c in cs if c["seed"] in full]
        if vs_full and method != "full pool":
            row["diff_full"], row["ci_full"] = interval(vs_full)
        rows.append(row)
    return rows


def fmt_diff(d: float, ci: float | None) -> str:
    if ci is None:
        return f"{100 * d:+.1f}"
    return f"{100 * d:+.1f} [{100 * (d - ci):+.1f}, {100 * (d + ci):+.1f}]"


def test_name(pool: dict) -> str:
    return f"`{pool['eval']}`" if pool["eval"].startswith("builtin:") else "the clean held-out split"


def pool_markdown(pool: dict, rows: list[dict], budgets: list[float]) -> str:
    """The accuracy tables (one per protocol) and the precision table of one pool."""
    from collections import OrderedDict

    lines = [f"### Pool `{pool['name']}`\n",
             f"{pool['pool_rows']} rows; test {test_name(pool)} ({pool['eval_rows']} images); teacher "
             f"{pool['teacher_accuracy']:.3f}, student before training {pool['student_accuracy_before']:.3f}; "
             f"equal steps = {pool['full_steps']} optimiser steps (the full pool's). Pool composition: "
             + ", ".join(f"{k} {v:.2f}" for k, v in sorted(pool["base_rates"].items())) + ".\n"]
    index = {(r["method"], r["budget"], r["protocol"]): r for r in rows}
    full = index.get(("full pool", 1.0, "epochs"))
    methods = list(OrderedDict.fromkeys(r["method"] for r in rows if r["method"] != "full pool"))
    for protocol in ("epochs", "steps"):
        present = [m for m in methods if any((m, b, protocol) in index for b in budgets)]
        if not present:
            continue
        title = "equal epochs" if protocol == "epochs" else "equal optimiser steps"
        lines.append(f"**Accuracy, {title}** — mean ± std; below it the paired difference to random "
                     f"(points, 95% t-interval over seeds); *vs full* = the same against the full pool.\n")
        lines.append("| method | " + " | ".join(f"{b:.0%}" for b in budgets) + " |")
        lines.append("|---|" + "---|" * len(budgets))
        for m in present:
            cells = []
            for b in budgets:
                r = index.get((m, b, protocol))
                if r is None:
                    cells.append("—")
                    continue
                extra = [f"vs random {fmt_diff(r['diff'], r['ci'])}"] if "diff" in r else []
                if "diff_full" in r:
                    extra.append(f"vs full {fmt_diff(r['diff_full'], r['ci_full'])}")
                cells.append(f"{r['mean']:.3f} ± {r['std']:.3f}" + "".join(f"<br>{e}" for e in extra))
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        if full:
            lines.append(f"| full pool (100%) | {full['mean']:.3f} ± {full['std']:.3f} |" + " |" * (len(budgets) - 1))
        lines.append("")
    lines += verdicts(rows, methods)
    if not any(pool["base_rates"].get(k, 0) for k in BAD_KINDS):  # a clean pool: nothing to count
        return "\n".join(lines) + "\n"
    lines.append("**Junk + shifted rows kept** (fraction of the kept rows; the pool's own rate: "
                 f"{sum(pool['base_rates'].get(k, 0) for k in BAD_KINDS):.2f})\n")
    lines.append("| method | " + " | ".join(f"{b:.0%}" for b in budgets) + " |")
    lines.append("|---|" + "---|" * len(budgets))
    for m in methods:
        r = [next((index[(m, b, p)] for p in ("epochs", "steps") if (m, b, p) in index), None) for b in budgets]
        cells = [f"{x['junk_shift']:.2f}" if x else "—" for x in r]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    if pool["skipped"]:
        lines.append("\nSkipped: " + "; ".join(f"`{m}` ({why})" for m, why in pool["skipped"].items()) + ".")
    return "\n".join(lines) + "\n"


def verdicts(rows: list[dict], methods: list[str]) -> list[str]:
    """Where each method wins, ties or loses against random: the paired 95% interval above, across or below 0
    (with one seed, the sign of the difference)."""
    out = ["**Against random, paired** — *wins*: interval above 0; *loses*: below 0; *ties*: across 0 "
           "(with one seed there is no interval: the sign of the difference).\n",
           "| method | wins | ties | loses |", "|---|---|---|---|"]
    for m in methods:
        if m == "random":
            continue
        got: dict[str, list[str]] = {"wins": [], "ties": [], "loses": []}
        for r in rows:
            if r["method"] != m or "diff" not in r:
                continue
            lo, hi = (r["diff"], r["diff"]) if r["ci"] is None else (r["diff"] - r["ci"], r["diff"] + r["ci"])
            key = "wins" if lo > 0 else "loses" if hi < 0 else "ties"
            got[key].append(f"{r['budget']:.0%} {r['protocol']}")
        out.append(f"| {m} | " + " | ".join(", ".join(v) or "—" for v in got.values()) + " |")
    return out + [""]


def markdown(report: dict, *, title: str = "Quality: student accuracy by training data") -> str:
    budgets = report["budgets"]
    tc = report["train_config"]
    parts = [f"## {title}\n",
             f"Seeds {report['seeds']}; trainer: {tc['epochs']} epochs (equal-epochs protocol), batch "
             f"{tc['batch_size']}, lr {tc['lr']}, α {'by kept fraction' if tc['alpha'] is None else tc['alpha']}, "
             f"T {tc['temperature']}, loss {tc['loss']}, "
             f"{'from scratch' if tc['reinit'] else 'from the pool student weights'}; the last epoch's weights "
             f"(no checkpoint picked on the test set). Measured in {report['seconds']:.0f} s on "
             f"{report['cpus']} CPU cores{software_line(report)} with:\n", f"    {report['command']}\n"]
    for pool in report["pools"]:
        parts.append(pool_markdown(pool, summarise(pool), budgets))
    return "\n".join(parts)


SOFTWARE = ("torch", "numpy", "pillow", "scikit-learn", "pyarrow", "faiss-cpu")


def software() -> dict:
    """Python and the versions of the packages the figures depend on (pool rendering, training, dedup):
    the same command under other versions gives other figures."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in SOFTWARE:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


def software_line(report: dict) -> str:
    """The versions a report was measured with, as a suffix for its header — ``" (Python 3.11.7, torch
    2.14.1, …)"`` — or "" for a report written before they were recorded."""
    sw = report.get("software") or {}
    names = {"python": "Python"}
    return " (" + ", ".join(f"{names.get(k, k)} {v}" for k, v in sw.items()) + ")" if sw else ""


def measure(args, script: str, argv: list[str]) -> dict:
    """Every pool of ``args`` measured; the report (command, timing, config, cells, summary)."""
    from kdata.training.train import TrainConfig

    over = {k: getattr(args, k) for k in ("epochs", "lr", "alpha", "temperature", "loss") if getattr(args, k) is not None}
    tc = replace(TrainConfig(eval_every_epoch=False, device="cpu"), reinit=args.reinit, **over)
    t0 = time.perf_counter()
    pools = run_all(list(getattr(args, "all_pools", POOLS)) if args.pool == "all" else [args.pool], args, tc)
    cmd = f"python {script}" + "".join(" " + shlex.quote(a) for a in argv)
    return {"command": cmd, "seconds": time.perf_counter() - t0, "seeds": list(range(args.seeds)),
            "budgets": [float(b) for b in args.budgets.split(",")], "train_config": tc.__dict__,
            "pools": pools, "summary": {p["name"]: summarise(p) for p in pools}, "cpus": os.cpu_count(),
            "software": software()}


def publish(report: dict, md: str, args) -> bool:
    """Print the tables (or the report as JSON); unless ``--no-write``, save the report to ``--json-out``.
    True when the caller should splice ``md`` into its page."""
    print(json.dumps(report, default=str) if args.json else md)
    if args.no_write:
        return False
    Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json_out).write_text(json.dumps(report, indent=1, default=str) + "\n")
    return True


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    report = measure(args, "benchmarks/quality.py", argv)
    md = markdown(report)
    if publish(report, md, args):
        import runpy

        runpy.run_path(str(HERE / "doc_tables.py"))["splice"]("quality", md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
