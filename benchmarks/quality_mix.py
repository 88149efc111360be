"""Quality on pools where one kind of noise dominates: does the default recipe still beat random?

Five pools from ``benchmarks/pools/digits_mix.py`` — ``digits2``'s images, teacher, student and test
split, made web-like again with one kind of noise dominating (junk, shifted rows, wrong labels,
duplicates) or with little noise at all — each with digits2's weak student and with a stronger one,
measured as ``benchmarks/quality.py`` measures its pools:
random, the default recipe and the oracle (random among the good rows), 10/30/50%, 5 seeds, equal
epochs and equal optimiser steps, paired differences to random with 95% t-intervals.

    python benchmarks/quality_mix.py --quick                 # smoke: 1 seed, 10% and 30%; writes nothing
    python benchmarks/quality_mix.py --jobs 2                # full: writes docs/benchmarks/quality_mix.md
    python benchmarks/quality_mix.py --mixes junk,light --students strong --seeds 3 --no-write

Every option of ``benchmarks/quality.py`` applies except ``--pool`` (``--mixes`` here).
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]  # as quality.py: no shadowing
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE / "pools"))

import runpy  # noqa: E402

import quality  # noqa: E402
from digits_mix import MIXES  # noqa: E402

JSON_OUT = HERE / "results" / "quality_mix.json"
TITLE = "Quality by noise mix: student accuracy by training data"


def add_mixes(ap) -> None:
    ap.add_argument("--mixes", default=",".join(MIXES), help=f"comma list of mixes (default: all: {', '.join(MIXES)})")
    ap.add_argument("--students", default="weak,strong",
                    help="weak (digits2's, 0.50 before distillation), strong (0.92) or both (default)")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = quality.parse_args(["--json-out", str(JSON_OUT), *argv], description=__doc__, extend=add_mixes)
    mixes = [m.strip() for m in args.mixes.split(",") if m.strip()]
    unknown = [m for m in mixes if m not in MIXES]
    if unknown:
        print(f"quality_mix: unknown mix {unknown[0]!r} (one of {', '.join(MIXES)})", file=sys.stderr)
        return 2
    students = [x.strip() for x in args.students.split(",") if x.strip()]
    if not students or set(students) - {"weak", "strong"}:
        print(f"quality_mix: --students takes weak, strong or both, not {args.students!r}", file=sys.stderr)
        return 2
    args.methods = "random,default" if args.methods == "auto" else args.methods
    args.all_pools = [f"digits_mix:{m}" + ("/strong" if s == "strong" else "") for s in students for m in mixes]
    report = quality.measure(args, "benchmarks/quality_mix.py", argv)
    md = quality.markdown(report, title=TITLE)
    if quality.publish(report, md, args):
        runpy.run_path(str(HERE / "doc_tables.py"))["splice"]("quality_mix", md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
