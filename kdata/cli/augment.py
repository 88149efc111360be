"""``kdata augment``: add HARD augmentations (critic-filtered) to a curated dataset."""

from __future__ import annotations

from kdata.cli.common import (
    add_dataset_dir,
    dataset_dir,
    emit_json,
    progress_printer,
    stage,
    summary_lines,
)


def register(sub) -> None:
    p = sub.add_parser("augment", help="generate hard augmentations where teacher and student disagree",
                       description="Read the curated dataset DIR, generate PER_SAMPLE augmented rows per "
                                   "original row that maximise the teacher-student KL (HARD, arXiv 2305.14890) "
                                   "while the teacher keeps its class, filter them with a critic, and write the "
                                   "original rows plus the accepted generated rows to OUT.")
    add_dataset_dir(p, help="a curated dataset written by kdata select / demo / dedup")
    p.add_argument("--teacher", default=None, help="teacher model spec (default: the manifest's teacher)")
    p.add_argument("--student", default=None, help="student model spec (default: the manifest's student)")
    p.add_argument("--per-sample", type=int, default=1, metavar="K", help="generated rows per original row")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory for the augmented dataset")
    p.add_argument("--steps", type=int, default=None, help="optimisation steps (default: 10)")
    p.add_argument("--seed", type=int, default=0, help="seed of the augmentation search")
    p.add_argument("--critic", default=None, metavar="DIR", help="fitted critic (kdata critic fit) instead of "
                   "the default critic")
    p.add_argument("--critic-recall", type=float, default=None,
                   help="re-choose the fitted critic's cut for this recall (default: the cut it was fitted with)")
    p.add_argument("--critic-threshold", type=float, default=None,
                   help="default critic: accept when its score is at least this (default: 0.5); not with --critic")
    p.add_argument("--random-search", action="store_true", help="gradient-free search even for differentiable models")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--batch-size", type=int, default=256, help="generated samples per optimisation batch")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--quiet", action="store_true", help="no progress bar on stderr")
    p.set_defaults(func=run)


def run(args) -> int:
    from kdata.augment.hard import HardConfig
    from kdata.augment.params import check_critic_threshold
    from kdata.core.errors import KdataError
    from kdata.models.spec import pick_device
    from kdata.pipeline.derive import augment_dataset
    from kdata.selection.critic_model import check_target

    shards = dataset_dir(args, "augment")
    from kdata.augment.hard import check_per_sample

    check_per_sample(args.per_sample)
    if args.steps is not None and args.steps < 0:
        raise KdataError(f"--steps {args.steps}: must be at least 0")
    if args.batch_size < 1:
        raise KdataError(f"--batch-size {args.batch_size}: must be at least 1")
    check_target(recall=args.critic_recall, option="--critic-{}")
    if args.critic_threshold is not None:
        check_critic_threshold(args.critic_threshold)
    if args.critic_recall is not None and not args.critic:
        raise KdataError("--critic-recall re-chooses a fitted critic's cut: give --critic DIR")
    if args.critic_threshold is not None and args.critic:
        raise KdataError(f"--critic-threshold {args.critic_threshold}: the default critic's cut; the fitted critic "
                         f"{args.critic} decides at its own cut (re-choose it with --critic-recall)")
    opts = {"per_sample": args.per_sample, "seed": args.seed, "batch_size": args.batch_size,
            "random_search": args.random_search}
    if args.steps is not None:
        opts["steps"] = args.steps
    if args.critic_threshold is not None:
        opts["critic_threshold"] = args.critic_threshold
    with stage(progress_printer(args.quiet or args.json), "augmenting"):
        report = augment_dataset(shards, teacher=args.teacher, student=args.student, out=args.out,
                                 config=HardConfig(**opts), critic=args.critic, critic_recall=args.critic_recall,
                                 device=pick_device(args.device))
    if args.json:
        emit_json(report.to_dict())
    else:
        print("\n".join(summary_lines(report)))
    return 0
