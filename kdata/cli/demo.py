"""``kdata demo --out DIR``: the whole job on the embedded default, in well under a minute."""

from __future__ import annotations

from kdata.cli.common import emit_json, progress_printer, summary_lines


def register(sub) -> None:
    p = sub.add_parser("demo", help="run the whole job on the built-in digits pool and models")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--budget", default="0.3")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-train", action="store_true",
                   help="skip distilling the student on the curated set and on a random set of the same size")
    p.add_argument("--json", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    from kdata.pipeline.demo import run_demo

    result = run_demo(out=args.out, budget=args.budget, seed=args.seed, progress=progress_printer(args.quiet),
                      train=not args.no_train)
    if args.json:
        emit_json(result)
        return 0
    print("\n".join(summary_lines(result["report"])))
    for line in result.get("lines", []):
        print(line)
    return 0
