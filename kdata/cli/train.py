"""``kdata train DIR``: distil a student from curated shards (the teacher's stored soft labels are the targets).

Nothing is thrown away: without ``--out`` the student is saved beside the dataset (``DIR-student``),
and with an eval set the best checkpoint on it is the one kept.
"""

from __future__ import annotations

import sys

from kdata.cli.common import add_dataset_dir, dataset_dir, emit_json, progress_printer

BUILTIN_EVAL = "builtin:digits-test"


def register(sub) -> None:
    from kdata.training.config import BUILTIN_TEXT_LR, PRETRAINED_TEXT_LR, TextTrainConfig, TrainConfig

    d, dt = TrainConfig(), TextTrainConfig()
    p = sub.add_parser("train", help="distil a student on curated shards and measure its accuracy",
                       description="Train STUDENT on the curated dataset DIR with the teacher's stored top-k soft "
                                   "labels (loss α·T²·KL + (1−α)·CE on web labels). With an eval set, measure "
                                   "accuracy before training and after every epoch and keep the best weights. "
                                   "Save OUT/student.pt2 (+ sidecar) and OUT/train_log.json; OUT defaults to "
                                   "DIR-student beside DIR.")
    add_dataset_dir(p, help="a curated dataset directory written by kdata select / demo / dedup / augment")
    p.add_argument("--student", default=None,
                   help="student spec: builtin:…, a .pt2/.pt export or timm:ARCH:CKPT (its weights are the start); "
                        "text shards: hf:PATH or builtin:text-student (default: the student DIR was selected with, "
                        "from its manifest; else builtin:digits-student, or builtin:text-student for causal-LM shards)")
    p.add_argument("--eval", default=None, metavar="EVAL",
                   help="labelled evaluation set: builtin:digits-test, an image folder or a Parquet pool with labels; "
                        "text: a JSONL/Parquet text pool; `none` for no evaluation (default: "
                        f"{BUILTIN_EVAL} for a builtin:digits-* student, builtin:text-test for a builtin:text-* "
                        "student, else none)")
    p.add_argument("--test", default=None, metavar="TEST",
                   help="another labelled set (same kinds as --eval), never used to choose weights: the saved "
                        "student is measured on it once, after training — the figure to report when --eval chose "
                        "the best epoch")
    p.add_argument("--epochs", type=int, default=None,
                   help=f"passes over the shards (default: {d.epochs}; text students: {dt.epochs})")
    p.add_argument("--temperature", type=float, default=None,
                   help=f"distillation temperature (default: {d.temperature})")
    p.add_argument("--alpha", type=float, default=None,
                   help="weight of the KD term vs CE on web labels (default: chosen by the kept fraction in DIR's "
                        "manifest, larger for smaller subsets; see docs/training.md; text students: 0.5)")
    p.add_argument("--steps", type=int, default=None, metavar="N",
                   help="train for exactly N optimiser steps whatever the data size (equal-steps comparisons); "
                        "the epochs follow and --epochs is ignored")
    p.add_argument("--loss", choices=["kd", "nkd"], default=None,
                   help=f"kd (Hinton) or nkd (normalized KD, arXiv 2303.13005) (default: {d.loss})")
    p.add_argument("--batch-size", type=int, default=None, help=f"rows per optimiser step (default: {d.batch_size})")
    p.add_argument("--lr", type=float, default=None,
                   help=f"peak learning rate of AdamW (default: {d.lr}; text students: {BUILTIN_TEXT_LR:g} for the built-in "
                        f"text student, {PRETRAINED_TEXT_LR:g} for a pre-trained one of your own)")
    p.add_argument("--seed", type=int, default=None,
                   help=f"seed of the shuffling, the jitter and --reinit (default: {d.seed})")
    p.add_argument("--reinit", action="store_true", help="start from freshly initialised weights instead of STUDENT's")
    p.add_argument("--keep-last", action="store_true",
                   help="keep the last epoch's weights even when an earlier epoch (or the start) scored better "
                        "on the eval set")
    p.add_argument("--out", default=None, metavar="OUT",
                   help="directory for student.pt2, student.json and train_log.json (default: DIR-student beside "
                        "DIR; -2, -3… when that is taken); a student already there is refused without --overwrite. "
                        "The state after each epoch is kept in OUT/.resume/: the same command run again after a "
                        "kill goes on from the last finished epoch")
    p.add_argument("--overwrite", action="store_true", help="replace a student already saved in --out")
    p.add_argument("--reselect-every", type=int, default=0, metavar="K",
                   help="every K epochs re-score --pool with the current student and re-select with KD³ (0: never)")
    p.add_argument("--reselect-threshold", type=float, default=None, metavar="TAU",
                   help="KD³'s confidence cut for each re-selection: rows whose combined teacher+student "
                        "confidence is below TAU are dropped even under the budget (with --reselect-every)")
    p.add_argument("--pool", default=None, help="pool to re-select from (with --reselect-every)")
    p.add_argument("--teacher", default=None, help="teacher spec for re-scoring (with --reselect-every)")
    p.add_argument("--workers", default="auto", help="decode worker processes (auto: 0 for small sets)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--no-verify", action="store_true",
                   help="skip checking DIR against its manifest (checksums and counts) before training")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--quiet", action="store_true", help="no progress bars on stderr")
    p.set_defaults(func=run)


def eval_spec(given: str | None, student: str) -> str | None:
    """``--eval``: as given, ``none`` → no evaluation, unset → the built-in test set for a built-in student."""
    if given is not None:
        return None if given.strip().lower() == "none" else given
    return BUILTIN_EVAL if student.startswith("builtin:digits") else None


def check_has_soft_labels(shards) -> None:
    """Shards selected from bring-your-own log-probabilities alone (``teacher_logprob``/``reference_logprob``,
    no class or token distribution) hold no teacher distribution to distil: one line saying what would."""
    from kdata.core.errors import KdataError
    from kdata.dataset.writer import read_manifest

    try:
        teacher = ((read_manifest(shards) or {}).get("models") or {}).get("teacher")
    except (KdataError, AttributeError):
        return  # the dataset's own checks say what is wrong with it
    if not isinstance(teacher, dict):
        return
    if str(teacher.get("spec", "")).startswith("byo:") and teacher.get("num_classes") == 1:
        raise KdataError(f"{shards}: selected from log-probabilities alone (--scores with teacher_logprob/"
                         "reference_logprob): the shards carry no teacher distribution to distil; score the pool "
                         "with the teacher (kdata select --pool P --teacher hf:PATH) to write per-token soft labels")


def image_config(args):
    """``TrainConfig`` of the command line: every numeric option checked (one line each) before any work."""
    from kdata.core.errors import KdataError
    from kdata.models.decode_pool import check_workers
    from kdata.models.spec import pick_device
    from kdata.training.config import TrainConfig

    if args.steps is not None and args.steps < 1:
        raise KdataError(f"--steps {args.steps}: must be at least 1 (leave it out to train for --epochs)")
    if args.reselect_threshold is not None and not (0.0 <= args.reselect_threshold <= 1.0 and args.reselect_every):
        raise KdataError("--reselect-threshold: a confidence in [0, 1], used with --reselect-every K")
    names = ("epochs", "batch_size", "lr", "temperature", "alpha", "loss", "seed", "steps")
    given = {k: getattr(args, k) for k in names if getattr(args, k) is not None}  # unset: the defaults
    cfg = TrainConfig(**given, reinit=args.reinit, workers=check_workers(args.workers), device=args.device,
                      reselect_every=args.reselect_every, reselect_threshold=args.reselect_threshold,
                      keep_best=not args.keep_last)
    pick_device(args.device)  # an unknown or absent device: one line now, not after the checks of DIR
    return cfg


def check_dataset(args, shards: str) -> None:
    """DIR against its manifest before any of it is read (every checksum and count, shard paths inside
    DIR); with ``--no-verify`` the manifest's own fields only, so no reader trips over a damaged one."""
    from kdata.training.source import check_manifest, verify_source

    if args.no_verify:
        check_manifest(shards)
    else:
        verify_source(shards)


def run(args) -> int:
    from kdata.pipeline.distill import train_student

    from kdata.cli.train_text import check_test, default_student, is_text_run, run_text

    shards = dataset_dir(args, "train")
    cfg = image_config(args)  # the options first: a bad one is one line before DIR is read
    check_dataset(args, shards)
    check_has_soft_labels(shards)
    args.student, args.student_default = default_student(args.student, shards)
    if is_text_run(args.student, shards):  # hf:/builtin:text-* student or text shards
        return run_text(args, shards)
    ev = eval_spec(args.eval, args.student)
    check_test(args.test, ev)
    log = train_student(shards=shards, student=args.student, eval=ev, test=args.test, config=cfg,
                        out=args.out, pool=args.pool, teacher=args.teacher, verify=not args.no_verify,
                        overwrite=args.overwrite, progress=progress_printer(args.quiet or args.json))
    log["student_default"] = args.student_default
    if args.json:
        emit_json(log)
    else:
        print("\n".join(summary(log)))
    for line in warning_lines(log):
        print(line, file=sys.stderr)
    return 0


def warning_lines(log: dict) -> list[str]:
    """What went wrong without stopping the run, for stderr."""
    if not log.get("worse_than_before"):
        return []
    last, saved = log.get("accuracy_last", log["accuracy"]), log["accuracy"]
    kept = (log.get("kept") or {}).get("epoch")
    after = (f"; the saved weights are epoch {kept}'s ({saved:.4f})" if saved is not None and saved != last
             and kept is not None else "")
    return [f"kdata: warning: training made the student worse on {log['eval']} "
            f"({log['accuracy_before']:.4f} before, {last:.4f} after the last epoch{after})"]


def summary(log: dict) -> list[str]:
    """What a person needs after training: accuracy before → after, which weights were kept, where."""
    lines = [(f"kdata: trained {log['student']} on {log['n_train']} rows for {log['epochs']} epochs "
              f"({log.get('steps', '?')} optimiser steps) in {log['seconds']:.1f}s")]
    if log.get("student_default"):
        lines.append(f"  --student not given: {log['student_default']}")
    if log.get("resumed_from_epoch"):
        lines.append(f"  resumed after epoch {log['resumed_from_epoch']} (the state a killed run left in "
                     f"{log.get('out')}/.resume)")
    if log.get("alpha"):
        lines.append(f"  α = {log['alpha']['value']}: {log['alpha']['reason']}")
    if log.get("accuracy") is not None:
        last = log.get("accuracy_last", log["accuracy"])
        lines.append(f"  accuracy on {log['eval']} ({log['n_eval']} images): before training "
                     f"{log['accuracy_before']:.4f} → after the last epoch {last:.4f}")
        per_epoch = [h["accuracy"] for h in log["history"] if "accuracy" in h]
        if len(per_epoch) > 1:
            lines.append("  by epoch: " + " ".join(f"{a:.4f}" for a in per_epoch))
        note = (log.get("kept") or {}).get("note") or "kept the last epoch's weights"
        lines.append(f"  {note}; saved accuracy {log['accuracy']:.4f}")
        if not log.get("test") and (log.get("kept") or {}).get("epoch") != log.get("epochs"):
            lines.append("  note: an accuracy on the set that chose the weights is optimistic; --test TEST measures "
                         "them on a set that chose nothing")
    else:
        lines.append("  no eval set: accuracy not measured (give --eval EVAL)")
    if log.get("test"):
        t = log["test"]
        lines.append(f"  accuracy of the saved weights on {t['spec']} ({t['n']} images, chose nothing): "
                     f"{t['accuracy']:.4f}")
    for r in log["reselections"]:
        lines.append(f"  re-selected {r['rows']} rows with {r['method']} at epoch {r['epoch']}"
                     + (f" (budget {r['budget']}, τ {r['threshold']})" if r.get("threshold") is not None else ""))
    lines += [f"  note: {n}" for n in log.get("notes") or []]
    files = log.get("files") or {}
    if files:
        lines.append(f"  saved to {log.get('out')}" + ("  (the default beside the dataset; --out DIR to choose)"
                                                      if log.get("out_default") else ""))
        lines += [f"    {k}: {v}" for k, v in files.items()]
    return lines
