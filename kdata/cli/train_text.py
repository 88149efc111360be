"""The text branch of ``kdata train DIR``: a causal-LM or text-classifier student on curated text shards.

Taken when ``--student`` is a text model (``hf:PATH``, ``builtin:text-*``) or when DIR's shards
carry text soft labels (``teacher_topk_ids`` per token, or text with class soft labels).
"""

from __future__ import annotations

import sys

from kdata.cli.common import emit_json, progress_printer

LM_EVAL = "builtin:text-test"
LM_STUDENT = "builtin:text-student"
IMAGE_DEFAULT_STUDENT = "builtin:digits-student"


def default_student(given: str | None, shards: str) -> tuple[str, str | None]:
    """(the student spec, where a default came from): ``--student`` as given; else the student the
    dataset was made with (its manifest); else the built-in student for its kind of shards."""
    from kdata.core.errors import KdataError
    from kdata.dataset.writer import manifest_model, read_manifest
    from kdata.training.shard_dataset import dataset_root
    from kdata.training.text_data import shard_kind

    if given:
        return given, None
    root = dataset_root(shards)
    spec = manifest_model(read_manifest(root), "student") if root else None
    if spec:
        return spec, f"the student {root} was selected with (its manifest)"
    kind = shard_kind(shards)
    if kind == "image":
        return IMAGE_DEFAULT_STUDENT, "the built-in image student"
    if kind == "causal_lm":
        return LM_STUDENT, "the built-in text student"
    raise KdataError(f"{shards}: text classifier shards: give the student, --student hf:PATH")


def is_text_run(student: str, shards: str) -> bool:
    """Whether ``kdata train`` takes the text branch (see the module doc)."""
    from kdata.models.hf import is_text_spec
    from kdata.training.text_data import shard_kind

    return is_text_spec(student) or shard_kind(shards) != "image"


def check_test(test: str | None, eval: str | None) -> None:
    """``--test`` must be another set than the one choosing the weights (one line otherwise)."""
    from kdata.core.errors import KdataError

    if test is not None and eval is not None and test.strip() == eval.strip():
        raise KdataError(f"--test {test}: the eval set that chooses the weights; give a set that chooses nothing")


def check_text_student(student: str, shards: str, kind: str) -> None:
    """Text shards train a text student: an image student for them is one line naming the shard."""
    from kdata.core.errors import KdataError
    from kdata.models.hf import is_text_spec
    from kdata.training.shard_dataset import shard_files

    if not is_text_spec(student):
        raise KdataError(f"{shard_files(shards)[0]}: {kind.replace('_', ' ')} text shards (text, no images), but "
                         f"{student} is an image student; train a text student on them: --student hf:PATH")


def run_text(args, shards: str) -> int:
    """``kdata train DIR`` on text shards: options → ``TextTrainConfig``, train, print or emit the log."""
    from kdata.core.errors import KdataError
    from kdata.pipeline.distill import student_dir
    from kdata.core.lock import exclusive
    from kdata.training.checkpoint import request_digest
    from kdata.training.text import TextTrainConfig, train_text
    from kdata.training.text_data import shard_kind

    kind = shard_kind(shards)
    student = args.student
    check_text_student(student, shards, kind)
    for flag, bad in (("--reselect-every", args.reselect_every), ("--reinit", args.reinit),
                      ("--loss nkd", args.loss == "nkd"), ("--pool", args.pool), ("--teacher", args.teacher)):
        if bad:
            raise KdataError(f"{flag}: not available for text students (image students only)")
    if kind == "causal_lm" and args.temperature not in (None, 1.0):
        raise KdataError(f"--temperature {args.temperature:g}: causal-LM shards store the teacher's token "
                         "log-probabilities at temperature 1 (text classifier and image students only)")
    names = ("epochs", "steps", "batch_size", "lr", "alpha", "seed", "temperature")
    given = {k: getattr(args, k) for k in names if getattr(args, k, None) is not None}
    cfg = TextTrainConfig(**given, device=args.device, keep_best=not args.keep_last)
    if args.eval is not None:
        ev = None if args.eval.strip().lower() == "none" else args.eval
    else:
        ev = LM_EVAL if kind == "causal_lm" and student.startswith("builtin:text") else None
    check_test(args.test, ev)
    request = request_digest(shards=shards, config=cfg, student=student, eval=ev, test=args.test)
    out = student_dir(shards, args.out, overwrite=args.overwrite, request=request)
    with exclusive(out):
        log = train_text(shards=shards, student=student, eval=ev, config=cfg, out=out, verify=not args.no_verify,
                         progress=progress_printer(args.quiet or args.json),
                         trust_remote_code=bool(getattr(args, "trust_remote_code", False)), test=args.test,
                         request=request)
    log["out_default"] = args.out is None
    log["student_default"] = args.student_default
    if args.json:
        emit_json(log)
    else:
        print("\n".join(text_summary(log)))
    for line in text_warnings(log):
        print(line, file=sys.stderr)
    return 0


def saved_weights(log: dict) -> str:
    """Which weights were saved: the start's, an epoch's (keep_best) or the last epoch's."""
    kept = log.get("kept_epoch", log["epochs"])
    if kept == log["epochs"]:
        return "the last epoch's weights"
    return "the starting weights (no epoch did better)" if kept == 0 else f"epoch {kept}'s weights"


def text_warnings(log: dict) -> list[str]:
    """What went wrong without stopping the run, for stderr: the last epoch scored worse than the start."""
    if not log.get("worse_than_before"):
        return []
    metric = log["metric"]
    fmt = "{:.2f}" if metric == "perplexity" else "{:.4f}"
    return [f"kdata: warning: training made the student worse on {log['eval']} ({metric} "
            f"{fmt.format(log[f'{metric}_before'])} before, {fmt.format(log[f'{metric}_last'])} after the last "
            f"epoch); saved {saved_weights(log)}: {metric} {fmt.format(log[f'{metric}_after'])}"]


def text_summary(log: dict) -> list[str]:
    """Held-out perplexity (LM) or accuracy (classifier) before → after, and where the student went."""
    lines = [f"kdata: trained {log['student']} ({log['kind'].replace('_', ' ')}) on {log['n_train']} rows for "
             f"{log['epochs']} epochs ({log['steps']} optimiser steps) in {log['seconds']:.1f}s"]
    if log.get("student_default"):
        lines.append(f"  --student not given: {log['student_default']}")
    if isinstance(log.get("lr"), dict):
        lines.append(f"  lr {log['lr']['value']:g}: {log['lr']['reason']}")
    if log.get("resumed_from_epoch"):
        lines.append(f"  resumed after epoch {log['resumed_from_epoch']} (the state a killed run left in "
                     f"{log['out']}/.resume)")
    metric = log["metric"]
    if log.get(f"{metric}_after") is not None:
        fmt = "{:.2f}" if metric == "perplexity" else "{:.4f}"
        lines.append(f"  {metric} on {log['eval']} ({log['n_eval']} texts): before training "
                     f"{fmt.format(log[f'{metric}_before'])} → after {fmt.format(log[f'{metric}_after'])}")
        if "kept_epoch" in log and log["kept_epoch"] != log["epochs"]:
            lines.append(f"  kept {saved_weights(log)}; the last epoch scored "
                         f"{fmt.format(log[f'{metric}_last'])} (--keep-last keeps it instead)")
    else:
        lines.append(f"  no eval set: {metric} not measured (give --eval EVAL)")
    if log.get("test"):
        t, fmt = log["test"], "{:.2f}" if metric == "perplexity" else "{:.4f}"
        lines.append(f"  {metric} of the saved weights on {t['spec']} ({t['n']} texts, chose nothing): "
                     f"{fmt.format(t[metric])}")
    lines.append(f"  saved to {log['out']}" + ("  (the default beside the dataset; --out DIR to choose)"
                                               if log.get("out_default") else ""))
    return lines
