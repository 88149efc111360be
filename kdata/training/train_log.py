"""The training log of an image distillation run (``train_log.json``, the CLI's ``--json``)."""

from __future__ import annotations

from dataclasses import asdict

from kdata.training.config import TrainConfig


def log_notes(history: list[dict], eval_set) -> list[str]:
    """Rows left out of training or of the evaluation, in words (the counts are in the log too)."""
    notes, worst = [], max(history, key=lambda h: h["undecodable"])
    if worst["undecodable"]:
        notes.append(f"{worst['undecodable']} rows left out of training in epoch {worst['epoch']} (the most in one "
                     f"epoch): their image cannot be decoded (the first: {worst['first_undecodable']})")
    if eval_set is not None and (eval_set.n_unlabelled or eval_set.n_undecodable):
        none = getattr(eval_set, "n_no_label", 0)
        why = [f"{none} because they carry no label"] if none else []
        if eval_set.n_unlabelled - none:
            why.append(f"{eval_set.n_unlabelled - none} because their labels are not among the student's classes")
        why.append(f"{eval_set.n_undecodable} because their image cannot be decoded")
        notes.append(f"{eval_set.spec}: rows left out of the evaluation: {', '.join(why)}; {len(eval_set)} evaluated")
    return notes


def training_log(config: TrainConfig, *, kept, before, last, history, done, n0, per_epoch, schedule, alpha,
                 reselections, notes, ds, student, eval_set, device, seconds) -> dict:
    """The training log (``train_log.json``, the CLI's ``--json``)."""
    return {
        "accuracy": kept["accuracy"],  # of the weights returned (and saved): the best epoch's with keep_best
        "accuracy_before": before,
        "accuracy_last": last,
        "kept": kept,
        "worse_than_before": None if last is None or before is None else last < before,
        "n_train": n0,  # the set training started from; a KD³ re-selection's size is in its entry
        "n_train_last": len(ds),
        "n_undecodable": max(h["undecodable"] for h in history),  # rows left out of an epoch (the most in one)
        "epochs": len(history),
        "steps": done,
        "protocol": {"kind": "equal-steps" if config.steps else "epochs", "steps_requested": config.steps or None,
                     "epochs_requested": None if config.steps else config.epochs,
                     "steps_per_epoch": per_epoch, "steps_planned": schedule.total},
        "alpha": alpha,
        "seconds": seconds,
        "loss": history[-1]["loss"],
        "history": history,
        "reselections": reselections,
        "notes": notes + log_notes(history, eval_set),
        "config": {k: v for k, v in asdict(config).items()},
        "device": str(device),
        "shards": [str(f) for f in ds.files],
        "score_temperature": ds.temperature,
        "student": student.spec,
        "eval": eval_set.spec if eval_set is not None else None,
        "n_eval": len(eval_set) if eval_set is not None else 0,
        "n_eval_unlabelled": eval_set.n_unlabelled if eval_set is not None else 0,  # no label or an unknown one
        "n_eval_no_label": getattr(eval_set, "n_no_label", 0) if eval_set is not None else 0,
        "n_eval_undecodable": eval_set.n_undecodable if eval_set is not None else 0,
    }
