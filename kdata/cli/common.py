"""Shared CLI helpers: output, progress and the options of ``kdata select``."""

from __future__ import annotations

import json
import sys


def emit_json(obj) -> None:
    print(json.dumps(obj, indent=None, sort_keys=True, default=str))


def progress_printer(quiet: bool):
    """Progress bars on stderr for long steps, or None when ``--quiet`` or stderr is not a terminal.

    The result is called as ``progress(stage, done=None, total=None)`` (see ``ProgressBars``).
    """
    if quiet or not sys.stderr.isatty():
        return None
    return ProgressBars()


class ProgressBars:
    """Rich progress bars, one line per stage (``scoring``, ``selecting``, ``writing``...).

    ``progress(stage, done, total)`` moves that stage's bar; ``progress(stage)`` without a total
    shows a pulsing bar until the next stage starts. The live display stops once every stage has
    finished, so summaries printed afterwards land below the bars.
    """

    def __init__(self, *, console=None):
        import atexit

        from rich.console import Console

        self.console = console or Console(stderr=True)
        self._progress = None
        self._tasks: dict[str, int] = {}
        atexit.register(self.close)

    def __call__(self, stage: str, done: int | None = None, total: int | None = None) -> None:
        if self._progress is None:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn,
                                       TimeElapsedColumn)

            self._progress = Progress(SpinnerColumn(), TextColumn("{task.description:<10}"), BarColumn(),
                                      MofNCompleteColumn(), TimeElapsedColumn(), console=self.console)
            self._tasks = {}
            self._progress.start()
        p = self._progress
        for name, tid in self._tasks.items():  # a new stage ends the pulsing (total-less) ones
            task = next(t for t in p.tasks if t.id == tid)
            if name != stage and task.total is None:
                p.update(tid, total=1, completed=1)
        if stage not in self._tasks:
            self._tasks[stage] = p.add_task(stage, total=total)
        p.update(self._tasks[stage], completed=done or 0, **({"total": total} if total is not None else {}))
        if all(t.finished for t in p.tasks):
            self.close()

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def add_select_options(p) -> None:
    """The options of ``kdata select`` (also used by ``flows/curate.py``)."""
    p.add_argument("--pool", default=None,
                   help="pool: builtin:digits-web (default), Parquet, image folder, .tar; with --scores: "
                        "where the kept rows' payload comes from (omit for shards without payload)")
    p.add_argument("--teacher", default="builtin:digits-teacher", help="teacher model spec")
    p.add_argument("--student", default="builtin:digits-student", help="student model spec")
    p.add_argument("--method", default="default", help="method or chain, e.g. kd3 or critic,kd3 (default: the default recipe)")
    p.add_argument("--budget", default="0.3", help="rows to keep: a count (200), fraction (0.3) or percentage (30%%)")
    p.add_argument("--out", required=True, help="output directory for the curated dataset")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--topk", type=int, default=5, help="teacher soft labels kept per row (default 5)")
    p.add_argument("--temperature", type=float, default=1.0, help="temperature of the stored soft labels")
    p.add_argument("--balance", choices=["none", "class", "cluster", "domain"], default=None,
                   help="spread the budget over predicted classes, embedding clusters or domains")
    p.add_argument("--dedup", choices=["none", "exact", "near", "semantic"], default=None,
                   help="remove duplicates before the budget: exact (decoded-pixel hash), near (+ pixel cosine), "
                        "semantic (+ SemDeDup on teacher embeddings); the better-ranked copy survives")
    p.add_argument("--dedup-threshold", type=float, default=None,
                   help="cosine threshold of the deepest dedup level (defaults: near 0.996, semantic 0.995)")
    p.add_argument("--dedup-frac", type=float, default=None,
                   help="semantic dedup: remove this fraction of the candidates instead of using a threshold")
    p.add_argument("--scores", default=None, metavar="FILE.parquet",
                   help="bring-your-own predictions instead of models: sample_id + teacher_logits/student_logits "
                        "lists, or top-k probabilities (see docs: methods)")
    p.add_argument("--reference", default=None, help="reference model spec for --method miniplm")
    p.add_argument("--critic", default=None, metavar="DIR", help="fitted critic for --method critic,... "
                   "(from `kdata critic fit`)")
    p.add_argument("--critic-recall", type=float, default=None,
                   help="re-choose the critic's cut for this recall on its validation split")
    p.add_argument("--hard", type=int, default=None, metavar="K",
                   help="HARD: generate K augmented rows per kept row where teacher and student disagree, "
                        "critic-filtered (docs: hard)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--workers", type=int, default=0, help="image decode worker processes")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--rows-per-shard", type=int, default=10_000)
    p.add_argument("--no-cache", action="store_true", help="re-score even when cached scores exist")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--card-dir", default=None, metavar="DIR",
                   help="also copy the data card (README.md + plots, always written beside the shards) "
                        "to DIR/<dataset-name>.md")


def config_from_args(args):
    from kdata.pipeline.run import SelectConfig

    pool = args.pool if args.pool is not None else (None if getattr(args, "scores", None) else "builtin:digits-web")
    return SelectConfig(pool=pool, teacher=args.teacher, student=args.student, method=args.method,
                        budget=args.budget, seed=args.seed, topk=args.topk, temperature=args.temperature,
                        balance=args.balance,
                        rows_per_shard=args.rows_per_shard, **extra_config(args))


def extra_config(args) -> dict:
    """Options other commands' modules add to ``kdata select`` (dedup, HARD, critic...)."""
    out = {}
    for name in ("dedup", "dedup_threshold", "dedup_frac", "hard", "critic", "critic_recall", "reference", "scores"):
        if getattr(args, name, None) is not None:
            out[name] = getattr(args, name)
    return out


def run_options(args):
    from kdata.pipeline.run import RunOptions

    return RunOptions(device=args.device, num_workers=args.workers, batch_size=args.batch_size,
                      cache=not args.no_cache, progress=progress_printer(args.quiet),
                      card_dir=getattr(args, "card_dir", None))


def summary_lines(report) -> list[str]:
    c = report.counts
    lines = [f"kdata: {report.status} {report.out}",
             f"  in {c['n_in']}  kept {c['kept']}  rejected {c['rejected']}  quarantined {c['quarantined']}"]
    for reason, n in c.get("rejected_by_reason", {}).items():
        lines.append(f"    rejected {reason}: {n}")
    if "generated" in c:  # HARD rows, accounted apart from the pool (docs: hard)
        lines.append(f"  generated {c['generated']}  kept {c['generated_kept']}  rejected {c['generated_rejected']}")
        for reason, n in c.get("generated_rejected_by_reason", {}).items():
            lines.append(f"    rejected {reason}: {n}")
    for f in report.files:
        lines.append(f"  {f['path']}  {f['rows']} rows  {f['bytes']:,} bytes")
    if report.seconds:
        lines.append(f"  {report.seconds:.1f}s")
    return lines
