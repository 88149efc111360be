"""Shared CLI helpers: output, progress and the options of ``kdata select``."""

from __future__ import annotations

import json
import sys


def emit_json(obj) -> None:
    print(json.dumps(obj, indent=None, sort_keys=True, default=str))


def progress_printer(quiet: bool):
    """A tiny progress callback: quiet when asked or when stderr is not a terminal."""
    if quiet or not sys.stderr.isatty():
        return None

    def step(msg: str) -> None:
        print(f"  scored {msg}", file=sys.stderr)

    return step


def add_select_options(p) -> None:
    """The options of ``kdata select`` (also used by ``flows/curate.py``)."""
    p.add_argument("--pool", default="builtin:digits-web", help="pool: builtin:digits-web, Parquet, image folder, .tar")
    p.add_argument("--teacher", default="builtin:digits-teacher", help="teacher model spec")
    p.add_argument("--student", default="builtin:digits-student", help="student model spec")
    p.add_argument("--method", default="default", help="method or chain, e.g. kd3 or critic,kd3 (default: the default recipe)")
    p.add_argument("--budget", default="0.3", help="rows to keep: a count (200), fraction (0.3) or percentage (30%%)")
    p.add_argument("--out", required=True, help="output directory for the curated dataset")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--topk", type=int, default=5, help="teacher soft labels kept per row (default 5)")
    p.add_argument("--temperature", type=float, default=1.0, help="temperature of the stored soft labels")
    p.add_argument("--balance", choices=["none", "class", "cluster", "domain"], default="none",
                   help="spread the budget over predicted classes, embedding clusters or domains")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--workers", type=int, default=0, help="image decode worker processes")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--rows-per-shard", type=int, default=10_000)
    p.add_argument("--no-cache", action="store_true", help="re-score even when cached scores exist")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--quiet", action="store_true")


def config_from_args(args):
    from ..pipeline import SelectConfig

    return SelectConfig(pool=args.pool, teacher=args.teacher, student=args.student, method=args.method,
                        budget=args.budget, seed=args.seed, topk=args.topk, temperature=args.temperature,
                        balance=None if args.balance == "none" else args.balance,
                        rows_per_shard=args.rows_per_shard, **extra_config(args))


def extra_config(args) -> dict:
    """Options other commands' modules add to ``kdata select`` (dedup, HARD, critic...)."""
    out = {}
    for name in ("dedup", "dedup_threshold", "dedup_frac", "hard", "critic", "critic_recall", "reference", "scores"):
        if getattr(args, name, None) is not None:
            out[name] = getattr(args, name)
    return out


def run_options(args):
    from ..pipeline import RunOptions

    return RunOptions(device=args.device, num_workers=args.workers, batch_size=args.batch_size,
                      cache=not args.no_cache, progress=progress_printer(args.quiet))


def summary_lines(report) -> list[str]:
    c = report.counts
    lines = [f"kdata: {report.status} {report.out}",
             f"  in {c['n_in']}  kept {c['kept']}  rejected {c['rejected']}  quarantined {c['quarantined']}"]
    for reason, n in c.get("rejected_by_reason", {}).items():
        lines.append(f"    rejected {reason}: {n}")
    for f in report.files:
        lines.append(f"  {f['path']}  {f['rows']} rows  {f['bytes']:,} bytes")
    if report.seconds:
        lines.append(f"  {report.seconds:.1f}s")
    return lines
