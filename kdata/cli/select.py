"""``kdata select``: score a pool, select under a budget, write curated shards."""

from __future__ import annotations

import sys

from kdata.cli.common import budget_note, emit_json, run_options, summary_lines
from kdata.pipeline.arguments import add_select_options, config_from_args, output_options


def register(sub) -> None:
    p = sub.add_parser("select", help="score a pool with teacher and student, select, write curated shards",
                       description="Score POOL with TEACHER and STUDENT, select BUDGET rows with METHOD, "
                                   "write Parquet shards with the teacher's soft labels and a manifest to OUT.")
    add_select_options(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from kdata.pipeline.run import run_select

    output_options(args)
    report = run_select(config_from_args(args), out=args.out, opts=run_options(args))
    if str(args.budget).strip() == "1":  # the one spelling that reads as both a fraction and a count
        print("kdata: note: --budget 1 is a count (one row); --budget 1.0 keeps the whole pool", file=sys.stderr)
    if args.json:  # stdout is the JSON; a budget that could not be met is still said, on stderr
        if note := budget_note(report):
            print(f"kdata: note: {note}", file=sys.stderr)
        emit_json(report.to_dict())
    else:
        print("\n".join(summary_lines(report)))
    return 0
