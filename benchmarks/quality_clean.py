"""Quality on clean pools: does the default recipe lose to random when the pool has no noise to remove?

Three pools of ``benchmarks/quality.py`` (digits, openclipart, icons), each reduced twice, with the
same teachers, students, test splits, trainer and both protocols: to the rows its ground truth calls
good (clean rows and their duplicates; the junk, shifted and mislabelled rows dropped before anything
is selected), and to its clean rows alone (the duplicates copy noisy rows too, wrong labels included,
so only this second pool has labels the teacher can fully confirm). Only ``random`` and the
``default`` recipe run: on a clean pool the tail the recipe cuts holds hard but correct rows, so this
is where cutting too much shows.

    python benchmarks/quality_clean.py --quick --pool digits   # smoke: 1 seed, 10% and 30%; writes nothing
    python benchmarks/quality_clean.py --pool all --jobs 3     # full: 5 seeds; writes docs/benchmarks/quality_clean.md

Every option of ``benchmarks/quality.py`` applies.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]  # as quality.py: no shadowing
sys.path.insert(0, str(HERE))

import runpy  # noqa: E402

import quality  # noqa: E402

JSON_OUT = HERE / "results" / "quality_clean.json"
CLEAN_POOLS = ("digits", "openclipart", "icons")  # --pool all here: the three pools above (not digits2)
TITLE = "Quality on the clean pools: student accuracy by training data"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = quality.parse_args(["--json-out", str(JSON_OUT), *argv, "--clean"])  # a --json-out given wins
    args.all_pools = CLEAN_POOLS
    report = quality.measure(args, "benchmarks/quality_clean.py", argv)
    args.clean_only = True  # the same pools again, their duplicates dropped too: one report, one page
    only = quality.measure(args, "benchmarks/quality_clean.py", argv)
    report = {**report, "seconds": report["seconds"] + only["seconds"], "pools": report["pools"] + only["pools"],
              "summary": {**report["summary"], **only["summary"]}}
    md = quality.markdown(report, title=TITLE)
    if quality.publish(report, md, args):
        runpy.run_path(str(HERE / "doc_tables.py"))["splice"]("quality_clean", md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
