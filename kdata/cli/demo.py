"""``kdata demo --out DIR``: the whole job on the embedded default, in about 15 s on 2 cores."""

from __future__ import annotations

from kdata.cli.common import emit_json, progress_printer, summary_lines


def register(sub) -> None:
    from kdata.training.config import TrainConfig  # the demo trains with the trainer's default epochs

    p = sub.add_parser("demo", help="run the whole job on the built-in digits pool and models",
                       description="Curate the built-in digits pool (scikit-learn digits made to look like web "
                                   "data: label noise, shift, junk, duplicates) with the built-in teacher and "
                                   "student into DIR, then distil the student on the curated rows and on a random "
                                   "set of the same size and print both accuracies next to the teacher's. "
                                   "Nothing is downloaded; the models' weights ship with kdata.")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory for the curated dataset")
    p.add_argument("--budget", default="0.3",
                   help="rows to keep: a count (200), a fraction (0.3) or a percentage (30%%) of the pool")
    p.add_argument("--seed", type=int, default=0, help="seed of the selection and of the students' training")
    p.add_argument("--epochs", type=int, default=None,
                   help=f"epochs of distillation for each of the two students (default: {TrainConfig.epochs}); "
                        "6 with --text")
    p.add_argument("--no-train", action="store_true",
                   help="skip distilling the student on the curated set and on a random set of the same size")
    p.add_argument("--text", action="store_true",
                   help="the text job instead: builtin:text-web (Python docstrings shaped like web text) with the "
                        "built-in teacher/student/reference LMs (trained on first use, well under a minute); "
                        "prints held-out perplexity of students distilled on the curated and a random set")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--quiet", action="store_true",
                   help="no progress bars on stderr (they are also off when stderr is not a terminal)")
    p.set_defaults(func=run)


def run(args) -> int:
    from kdata.core.errors import KdataError
    from kdata.pipeline.demo import DEMO_EPOCHS, run_demo

    if args.text:
        from kdata.pipeline.demo_text import DEMO_EPOCHS as TEXT_EPOCHS
        from kdata.pipeline.demo_text import run_text_demo as run_demo  # the text job
    epochs = args.epochs if args.epochs is not None else (TEXT_EPOCHS if args.text else DEMO_EPOCHS)
    if epochs < 1:
        raise KdataError(f"--epochs {epochs}: must be at least 1")
    if not args.no_train:  # the students' options, checked before the dataset is written
        from kdata.training.config import TextTrainConfig, TrainConfig

        (TextTrainConfig if args.text else TrainConfig)(epochs=epochs, seed=args.seed)
    result = run_demo(out=args.out, budget=args.budget, seed=args.seed, epochs=epochs,
                      progress=progress_printer(args.quiet or args.json), train=not args.no_train)
    if args.json:
        emit_json(result)
        return 0
    print("\n".join(summary_lines(result["report"])))
    for line in result.get("lines", []):
        print(line)
    return 0
