"""References for the quality benchmark: what each kind of noise costs a distilled student, what the
hard rows are worth, and what a perfect tail cut would add to the default recipe.

The pools, teachers, students, test splits and trainer of ``benchmarks/quality.py``, equal optimiser
steps, budgets 10% and 30%, ``random`` and the ``default`` recipe, and references that read the
ground truth (none of them is a method):

* **oracle** — random among the rows the ground truth calls good (clean rows and duplicates), as
  many as the others keep;
* **oracle + mislabelled / shifted / junk rows** (``--noise-kinds``) — random among the good rows
  and every row of that one noisy kind: against the oracle, what that kind of noise costs;
* **oracle without its hardest / easiest 30%** (``--hard-rows``) — less the good rows with the
  highest (lowest) teacher–student KL: what the hard rows are worth;
* **default, noisy rows swapped for good** (``--swap-noisy``) — the default's own kept set with its
  junk, shifted and mislabelled rows exchanged for good rows it did not keep.

    python benchmarks/quality_refs.py --quick --pool digits   # smoke: 1 seed, 4 epochs; writes nothing
    python benchmarks/quality_refs.py --pool all --jobs 4     # full: 5 seeds; writes docs/benchmarks/quality_refs.md

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

JSON_OUT = HERE / "results" / "quality_refs.json"
DEFAULTS = ["--methods", "random,default", "--protocols", "steps", "--budgets", "0.1,0.3",
            "--hard-rows", "--swap-noisy", "--noise-kinds"]
KINDS = [(quality.ORACLE, None), *[(name, kind) for kind, name in quality.WITH_KIND.items()]]
GAP = ["default", quality.SWAPPED, quality.ORACLE, quality.NO_HARDEST, quality.NO_EASIEST]


def cell(r: dict | None, *, share: float | None = None) -> str:
    """``mean (difference to random [95% interval])``, and the share of the kind let in."""
    if r is None:
        return "—"
    diff = f" ({quality.fmt_diff(r['diff'], r['ci'])})" if "diff" in r else ""
    return f"{r['mean']:.3f}{diff}" + (f" · {share:.0%}" if share is not None else "")


def table(report: dict, columns: list[tuple[str, str | None]], header: list[str]) -> list[str]:
    """One row per pool × budget: random's accuracy, then each column's cell."""
    lines = ["| pool | budget | random | " + " | ".join(header) + " |", "|---|---|---:|" + "---:|" * len(header)]
    for pool in report["pools"]:
        index = {(r["method"], r["budget"]): r for r in quality.summarise(pool) if r["protocol"] == "steps"}
        for b in report["budgets"]:
            rnd = index.get(("random", b))
            cells = [f"{rnd['mean']:.3f}" if rnd else "—"]
            for method, kind in columns:
                r = index.get((method, b))
                share = None if kind is None or r is None else r["label_noise" if kind == "label_noise" else "junk_shift"]
                cells.append(cell(r, share=share))
            lines.append(f"| {pool['name']} | {b:.0%} | " + " | ".join(cells) + " |")
    return lines


def markdown(report: dict) -> str:
    """The two tables of the page: noise kinds, then the default's gap to the oracle."""
    return "\n".join([
        "## References: student accuracy with equal optimiser steps\n",
        f"Seeds {report['seeds']}; the trainer of [the quality benchmark](quality.md) with equal optimiser steps "
        f"(as many as the full pool's epochs give). Each cell: accuracy (mean over seeds) and, in brackets, "
        f"the paired difference to random (points, 95% t-interval over seeds). Measured in "
        f"{report['seconds']:.0f} s on {report['cpus']} CPU cores{quality.software_line(report)} with:\n", f"    {report['command']}\n",
        "### What each kind of noise costs\n",
        "The oracle, then the oracle with every row of one noisy kind let in; after `·`, the share of the "
        "kept rows that are of that kind.\n",
        *table(report, KINDS, ["oracle (good rows only)", "+ mislabelled rows", "+ shifted rows", "+ junk rows"]),
        "", "### What the default recipe leaves on the table\n",
        *table(report, [(m, None) for m in GAP],
               ["default", "default, noisy rows swapped for good", "oracle", "oracle less its hardest 30%",
                "oracle less its easiest 30%"]),
        ""])


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = quality.parse_args(["--json-out", str(JSON_OUT), *DEFAULTS, *argv])  # options given win
    args.oracle = True  # --quick leaves the oracle out of quality.py; here it is the point
    report = quality.measure(args, "benchmarks/quality_refs.py", argv)
    md = markdown(report)
    if quality.publish(report, md, args):
        runpy.run_path(str(HERE / "doc_tables.py"))["splice"]("quality_refs", md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
