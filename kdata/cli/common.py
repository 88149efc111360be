"""Shared CLI helpers: help formatting, the dataset-directory argument, output and progress."""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import contextmanager
from pathlib import Path

from kdata.dataset.manifest import MANIFEST

# help for options that many commands share, used where a command gives none
COMMON_HELP = {
    "--seed": "random seed of every randomised choice",
    "--batch-size": "samples per forward pass",
    "--quiet": "no progress bars on stderr (they are also off when stderr is not a terminal)",
    "--json": "print one JSON object on stdout",
    "--device": "auto, cpu, cuda or cuda:N",
    "--teacher": "teacher model spec (.pt2, .pt, open_clip:…, timm:…, builtin:…)",
    "--student": "student model spec (.pt2, .pt, open_clip:…, timm:…, builtin:…)",
    "--budget": "rows to keep: a count (200), a fraction (0.3) or a percentage (30%%) of the pool",
    "--out": "output directory",
}


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` with each option's default: ``(default: X)``, ``(default: none)`` for an option
    left unset, nothing for switches or where the help already says it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "(default" in text or "%(default)" in text or action.nargs == 0 or action.required \
                or action.default == argparse.SUPPRESS or text.startswith("required"):
            return text
        if action.default is None:
            return text + " (default: none)" if action.option_strings else text
        return super()._get_help_string(action)


def add_dataset_dir(p, *, help: str) -> None:
    """The dataset directory as the first positional argument, with the old ``--shards DIR`` kept as
    a hidden alias for a release (``dataset_dir`` resolves the two)."""
    p.add_argument("dir", nargs="?", default=None, metavar="DIR", help=help)
    p.add_argument("--shards", dest="shards_alias", default=None, metavar="DIR", help=argparse.SUPPRESS)


def dataset_dir(args, command: str) -> str:
    """The dataset directory of ``kdata COMMAND DIR`` (or of the deprecated ``--shards DIR``)."""
    from kdata.core.errors import KdataError

    old = getattr(args, "shards_alias", None)
    if old is not None:
        if args.dir is not None and args.dir != old:
            raise KdataError(f"kdata {command}: give the dataset directory once (DIR {args.dir} or --shards {old})")
        print(f"kdata: note: --shards is deprecated; write `kdata {command} {old} …`", file=sys.stderr)
        return old
    if args.dir is None:
        raise KdataError(f"kdata {command}: give the dataset directory: kdata {command} DIR …")
    return args.dir


def alias_value(args, new: str, old: str, *, flag: str, old_flag: str):
    """The value of option ``flag``, or of its deprecated hidden alias ``old_flag`` (one note on stderr)."""
    from kdata.core.errors import KdataError

    value, legacy = getattr(args, new), getattr(args, old)
    if legacy is None:
        return value
    if value is not None and value != legacy:
        raise KdataError(f"{flag} {value} and {old_flag} {legacy}: give {flag} once")
    print(f"kdata: note: {old_flag} is deprecated; write {flag} {legacy}", file=sys.stderr)
    return legacy


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
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                SpinnerColumn,
                TextColumn,
                TimeElapsedColumn,
            )

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


def quarantine_lines(out, n: int, *, top: int = 3, by_reason: dict | None = None) -> list[str]:
    """The commonest kinds of quarantine error of OUT (``quarantine_kind``: what differs per row, such
    as a line number or a size, left out), so a run says why rows were set aside without a trip to
    ``kdata inspect``. ``by_reason``: the manifest's ``quarantined_by_reason`` (else read from
    OUT's decisions table, as for a dataset written before the manifest had it)."""
    from pathlib import Path

    import pyarrow.parquet as pq

    from kdata.dataset.decisions import quarantined_by_reason

    path = Path(out) / "decisions.parquet"
    if not n:
        return []
    if by_reason is None:
        if not path.is_file():
            return []
        names = pq.read_schema(path).names
        by_reason = quarantined_by_reason(pq.read_table(path, columns=[c for c in ("decision", "reason", "error")
                                                                        if c in names]))
    kinds = sorted(by_reason.items(), key=lambda kv: (-kv[1], kv[0]))
    if len(kinds) == top + 1:  # naming the last kind takes the line a summary of it would
        top += 1
    lines = [f"    quarantined {kind}: {k}" for kind, k in kinds[:top]]
    if len(kinds) > top:
        rest = sum(k for _, k in kinds[top:])
        lines.append(f"    quarantined, {len(kinds) - top} other kind(s) of error: {rest} (kdata inspect {out} lists each)")
    return lines


def budget_note(report) -> str | None:
    """Why fewer rows were kept than the budget asked for, or None."""
    budget, kept = (report.info or {}).get("budget_rows"), report.counts["kept"]
    if isinstance(budget, int) and kept < budget:
        return (f"the budget was {budget} rows; only {kept} were left to keep after the filters, dedup and "
                "quarantine (decisions.parquet says why each row went)")
    return None


MAX_FILES_LISTED = 8  # shards named one per line in a run's summary; more are summed in one line


def summary_lines(report) -> list[str]:
    c = report.counts
    lines = [f"kdata: {report.status} {report.out}",
             f"  in {c['n_in']}  kept {c['kept']}  rejected {c['rejected']}  quarantined {c['quarantined']}"]
    for reason, n in c.get("rejected_by_reason", {}).items():
        lines.append(f"    rejected {reason}: {n}")
    lines += quarantine_lines(report.out, c.get("quarantined", 0), by_reason=c.get("quarantined_by_reason"))
    info = report.info or {}
    if report.status == "written" and info.get("units"):  # none for --scores predictions
        hits = int(info.get("score_cache_hits") or 0)
        lines.append(f"  pool units {info['units']}: {hits} with cached scores, {info['units'] - hits} scored now")
    note = budget_note(report)
    if note:
        lines.append(f"  note: {note}")
    if "generated" in c:  # HARD rows, accounted apart from the pool (docs: hard)
        lines.append(f"  generated {c['generated']}  kept {c['generated_kept']}  rejected {c['generated_rejected']}")
        for reason, n in c.get("generated_rejected_by_reason", {}).items():
            lines.append(f"    rejected {reason}: {n}")
    files = list(report.files)
    shown = files if len(files) <= MAX_FILES_LISTED else files[:MAX_FILES_LISTED - 1]
    for f in shown:
        lines.append(f"  {f['path']}  {f['rows']} rows  {f['bytes']:,} bytes")
    if len(shown) < len(files):  # 10,000 shards are not 10,000 lines: the manifest lists them
        rest = files[len(shown):]
        lines.append(f"  … {len(rest)} more files  {sum(f['rows'] for f in rest)} rows  "
                     f"{sum(f['bytes'] for f in rest):,} bytes  (every file: {report.out}/{MANIFEST})")
    beside = [name for name in BESIDE_SHARDS if (Path(report.out) / name).is_file()]
    if beside:
        lines.append("  with " + ", ".join(f"{n} ({BESIDE_SHARDS[n]})" if BESIDE_SHARDS[n] else n for n in beside))
    if report.seconds:
        lines.append(f"  {report.seconds:.1f}s")
    return lines


BESIDE_SHARDS = {MANIFEST: "", "decisions.parquet": "every row's decision", "README.md": "data card",
                 "report.html": ""}  # the files a run writes beside its shards, said in its summary


def run_options(args):
    """The validated RunOptions of a command line, with progress bars unless ``--quiet`` or ``--json``."""
    from kdata.pipeline.arguments import run_options_from_args

    opts = run_options_from_args(args)
    opts.progress = progress_printer(getattr(args, "quiet", False) or getattr(args, "json", False))
    return opts


@contextmanager
def stage(progress, name: str):
    """``with stage(progress, "deduplicating"):`` a pulsing bar while a step without counts runs (closed
    when the step ends, however it ends)."""
    if progress:
        progress(name)
    try:
        yield
    finally:
        if progress:
            progress(name, 1, 1)
