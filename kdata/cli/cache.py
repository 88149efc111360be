"""``kdata cache`` (what the cache holds, per section) and ``kdata cache prune`` (``kdata.core.cache_admin``)."""

from __future__ import annotations

import argparse
import sys
import time

from kdata.cli.common import emit_json


def register(sub) -> None:
    p = sub.add_parser("cache", help="show what kdata's cache holds, or prune it by last use or size",
                       description="Show kdata's cache ($KDATA_CACHE, else $XDG_CACHE_HOME/kdata, else the user "
                                   "cache directory) per section, or prune the derived sections (scores, dedup "
                                   "features, parsed text units, the flows' generated shards and Prefect records): "
                                   "entries unused for --older-than, then the least recently used until the cache "
                                   "fits --max-size. Entries in use or used in the last hour are kept.")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(func=run_info)
    cs = p.add_subparsers(dest="cache_command", metavar="{info,prune}")
    i = cs.add_parser("info", help="entries and size per section (the default)")
    i.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print one JSON object on stdout")
    i.set_defaults(func=run_info)
    r = cs.add_parser("prune", help="remove derived entries by last use and size")
    r.add_argument("--older-than", metavar="AGE", default=None,
                   help="remove entries unused for AGE: 30d, 12h, 90m (a bare number is days)")
    r.add_argument("--max-size", metavar="SIZE", default=None,
                   help="then remove the least recently used until the whole cache is at most SIZE: 500M, 20G "
                        "(the unit is required; B for bytes)")
    r.add_argument("--dry-run", action="store_true", help="say what would be removed, remove nothing")
    r.add_argument("--json", action="store_true", default=argparse.SUPPRESS,  # kdata cache --json prune: kept
                   help="print one JSON object on stdout")
    r.set_defaults(func=run_prune)


def _size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _ago(t: float | None, now: float) -> str:
    if t is None:
        return "-"
    s = max(0.0, now - t)
    return f"{s / 86400:.1f}d" if s >= 86400 else f"{s / 3600:.1f}h" if s >= 3600 else f"{s / 60:.0f}m"


def run_info(args) -> int:
    from kdata.core.cache_admin import usage
    from kdata.core.paths import cache_root

    root, now = cache_root(), time.time()
    sections = usage(root)
    if args.json:
        emit_json({"root": str(root), "sections": sections,
                   "bytes": sum(s["bytes"] for s in sections.values())})
        return 0
    total = sum(s["bytes"] for s in sections.values())
    print(f"kdata cache: {root}  ({_size(total)})")
    print(f"  {'section':<16} {'entries':>8} {'size':>10} {'last used':>20}  prune")
    for name, s in sections.items():
        used = f"{_ago(s['newest_use'], now)} … {_ago(s['oldest_use'], now)} ago" if s["entries"] else "-"
        print(f"  {name:<16} {s['entries']:>8,} {_size(s['bytes']):>10} {used:>20}  {'yes' if s['pruned'] else 'kept'}")
    return 0


def run_prune(args) -> int:
    from kdata.core.cache_admin import parse_age, parse_size, prune
    from kdata.core.paths import cache_root

    older = parse_age(args.older_than) if args.older_than is not None else None
    max_bytes = parse_size(args.max_size) if args.max_size is not None else None
    root = cache_root()
    r = prune(root, older_than_s=older, max_bytes=max_bytes, dry_run=args.dry_run)
    if args.json:
        emit_json({"root": str(root), **r})
        return 0
    verb = "would remove" if r["dry_run"] else "removed"
    parts = ", ".join(f"{n} {s}" for s, n in r["by_section"].items() if n)
    print(f"kdata cache: {verb} {r['removed']:,} entries ({_size(r['removed_bytes'])}{': ' + parts if parts else ''}); "
          f"{_size(r['left_bytes'])} left in {root}")
    if r["skipped_in_use"] or r["skipped_recent"]:
        print(f"  kept {r['skipped_in_use']:,} entries in use by a running process and {r['skipped_recent']:,} used "
              f"in the last hour")
    if r["over_max_size"]:
        print(f"kdata: warning: the cache is still over --max-size {args.max_size}: what is left is in use, recent, "
              f"or in the sections kept (models, pools, digests, native)", file=sys.stderr)
    return 0
