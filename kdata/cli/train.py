"""``kdata train``: distil a student from curated shards (the teacher's stored soft labels are the targets)."""

from __future__ import annotations

from kdata.cli.common import emit_json


def register(sub) -> None:
    p = sub.add_parser("train", help="distil a student on curated shards and measure its accuracy",
                       description="Train STUDENT on the curated shards in SHARDS with the teacher's stored top-k "
                                   "soft labels (loss α·T²·KL + (1−α)·CE on web labels), evaluate on EVAL, and "
                                   "save OUT/student.pt2 (+ sidecar) and OUT/train_log.json.")
    p.add_argument("--shards", required=True, help="a curated dataset directory written by kdata select/demo")
    p.add_argument("--student", default="builtin:digits-student",
                   help="student spec: builtin:…, a .pt2/.pt export or timm:ARCH:CKPT (its weights are the start)")
    p.add_argument("--eval", default=None,
                   help="labelled evaluation set: builtin:digits-test, an image folder or a Parquet pool with labels")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--temperature", type=float, default=None, help="distillation temperature (default 1.0)")
    p.add_argument("--alpha", type=float, default=None, help="weight of the KD term vs CE on web labels (default 0.9)")
    p.add_argument("--loss", choices=["kd", "nkd"], default=None, help="kd (Hinton) or nkd (normalized KD, arXiv 2303.13005)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--reinit", action="store_true", help="start from freshly initialised weights instead of STUDENT's")
    p.add_argument("--out", default=None, help="directory for student.pt2, student.json and train_log.json")
    p.add_argument("--reselect-every", type=int, default=0, metavar="K",
                   help="every K epochs re-score --pool with the current student and re-select with KD³")
    p.add_argument("--pool", default=None, help="pool to re-select from (with --reselect-every)")
    p.add_argument("--teacher", default=None, help="teacher spec for re-scoring (with --reselect-every)")
    p.add_argument("--workers", default="auto", help="decode worker processes (default auto: 0 for small sets)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--no-verify", action="store_true",
                   help="skip checking SHARDS against its manifest (checksums and counts) before training")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    from kdata.core.errors import KdataError
    from kdata.pipeline.distill import train_student
    from kdata.training.train import TrainConfig

    workers = args.workers
    if workers != "auto":
        try:
            workers = int(workers)
        except ValueError:
            raise KdataError(f"--workers {workers}: expected a number or auto") from None
    if args.reselect_every < 0:
        raise KdataError("--reselect-every must be ≥ 0")
    given = {k: getattr(args, k) for k in ("epochs", "batch_size", "lr", "temperature", "alpha", "loss", "seed")
             if getattr(args, k) is not None}  # unset options keep TrainConfig's defaults
    cfg = TrainConfig(**given, reinit=args.reinit, workers=workers, device=args.device,
                      reselect_every=args.reselect_every)
    log = train_student(shards=args.shards, student=args.student, eval=args.eval, config=cfg, out=args.out,
                    pool=args.pool, teacher=args.teacher, quiet=args.quiet or args.json,
                    verify=not args.no_verify)
    if args.json:
        emit_json(log)
        return 0
    acc = log["accuracy"]
    before = log["accuracy_before"]
    line = f"kdata: trained {log['student']} on {log['n_train']} rows for {log['epochs']} epochs in {log['seconds']:.1f}s"
    print(line)
    if acc is not None:
        print(f"  accuracy on {log['eval']}: {acc:.4f} (before training {before:.4f}, {log['n_eval']} images)")
    for r in log["reselections"]:
        print(f"  re-selected {r['rows']} rows with {r['method']} at epoch {r['epoch']}")
    for k, v in log.get("files", {}).items():
        print(f"  {k}: {v}")
    return 0
