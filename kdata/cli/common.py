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


def run_options(args):
    """The validated RunOptions of a command line, with progress bars unless ``--quiet``."""
    from kdata.pipeline.arguments import run_options_from_args

    opts = run_options_from_args(args)
    opts.progress = progress_printer(getattr(args, "quiet", False))
    return opts
