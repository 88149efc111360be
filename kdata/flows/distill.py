"""The ``distill`` Prefect flow: train a student on a curated dataset version and record its accuracy.

Thin by design: it calls the trainer (``kdata.pipeline.distill.train_student``, the function behind
``kdata train``) with the trainer's own defaults (``kdata.training.train.TrainConfig``: enough epochs,
and the best weights on the eval set kept) and publishes the accuracy before and after as a Prefect
artifact that says plainly when training made the student worse. ``data`` may be a dataset
directory or a glob such as ``runs/curated-*``, in which case the newest *complete* version (one
with a manifest) is used, so a nightly schedule trains on what last night's curate run wrote. The
student is saved beside the dataset (``runs/curated-X-student/``), never inside it.

    python flows/curate.py --pool builtin:digits-web --out runs/curated-v1
    python flows/distill.py --data 'runs/curated-*' --eval builtin:digits-test

Text datasets (shards with per-token soft labels, or a ``hf:PATH`` / ``builtin:text-*`` student) train
with the text trainer (``kdata.training.text.train_text``, the function behind ``kdata train`` on
text shards); the artifact then reports held-out perplexity (lower is better) or, for text
classifiers, accuracy. The image defaults become ``builtin:text-student`` / ``builtin:text-test``
on causal-LM shards. Text students, like image ones, end with the weights that score best on the eval
set, as ``kdata train`` does (``keep_last`` / ``--keep-last``: the last epoch's).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from kdata.core.errors import KdataError
from kdata.core.warn import shows_lines
from kdata.flows.config import DEFAULT_DATA, latest_dataset
from kdata.flows.run_log import logs_warnings
from kdata.flows.runners import retryable
from kdata.pipeline.distill import student_dir

RESULT_KEYS = ("accuracy", "accuracy_before", "accuracy_last", "kept", "worse_than_before", "n_train", "epochs",
               "seconds", "files")
TEXT_RESULT_KEYS = ("kind", "metric", "perplexity", "perplexity_before", "perplexity_after", "perplexity_last",
                    "accuracy", "accuracy_before", "accuracy_after", "accuracy_last", "kept_epoch",
                    "worse_than_before", "n_train", "epochs", "steps", "seconds", "files", "eval", "n_eval")
IMAGE_STUDENT, IMAGE_EVAL = "builtin:digits-student", "builtin:digits-test"
TEXT_STUDENT, TEXT_EVAL = "builtin:text-student", "builtin:text-test"


def text_run(shards: str, student: str, eval: str | None) -> tuple[str, str | None] | None:
    """(student, eval) of a text run — the image defaults swapped for the text ones on causal-LM
    shards — or None when ``shards`` and ``student`` are an image run."""
    from kdata.models.hf import is_text_spec
    from kdata.training.text_data import shard_kind

    kind = shard_kind(shards)
    if kind == "image" and not is_text_spec(student):
        return None
    if student == IMAGE_STUDENT:
        if kind != "causal_lm":
            raise KdataError(f"{shards}: text classifier shards: give the student (--student hf:PATH)")
        student = TEXT_STUDENT
    if eval == IMAGE_EVAL:
        eval = TEXT_EVAL if kind == "causal_lm" else None
    return student, eval


def train_options(*, epochs: int | None = None, seed: int | None = None, device: str | None = None) -> dict:
    """The TrainConfig fields the flow sets; the rest (and ``epochs`` when None) are the trainer's defaults.
    Checked here, so a bad value is one line before any work."""
    from kdata.training.train import TrainConfig, check_config

    given = {k: v for k, v in {"epochs": epochs, "seed": seed, "device": device}.items() if v is not None}
    check_config(TrainConfig(**given))
    return given


def outcome(result: dict, *, eval: str | None, lower_is_better: bool = False) -> dict:
    """``verdict`` (improved / no gain / worse / not evaluated), ``worse`` and one plain ``message``.

    ``result``: the trainer's log, with the eval-set accuracy before training, after it (``accuracy``, or
    ``accuracy_after`` from the text trainer) and at the last epoch; ``lower_is_better``: perplexity
    instead (``perplexity_before`` / ``_after`` / ``_last``, a causal-LM text student).
    ``worse``: the saved student scores below the starting one. ``no gain`` with
    ``training_made_worse``: the last epoch scored below the start and the trainer kept the
    starting weights, so nothing was learnt (e.g. too few epochs)."""
    metric, d = ("perplexity", 2) if lower_is_better else ("accuracy", 4)
    before, last = result.get(f"{metric}_before"), result.get(f"{metric}_last")
    after = result.get(f"{metric}_after", result.get(metric))
    if before is None or after is None:
        return {"verdict": "not evaluated", "worse": None, "training_made_worse": None,
                "message": "not evaluated: no eval set, so it is unknown whether the student improved"}

    def below(a: float, b: float) -> bool:  # a scores below b
        return a > b if lower_is_better else a < b

    worse = below(after, before)
    made_worse = worse or (last is not None and below(last, before))
    line = f"{metric} on {eval}: {before:.{d}f} before → {after:.{d}f} after ({after - before:+.{d}f})"
    if worse:
        verdict, msg = "worse", f"WORSE: the student got worse; {line}. Do not use it; train longer or curate again."
    elif below(before, after):
        verdict, msg = "improved", f"improved: {line}"
    elif made_worse:
        verdict, msg = "no gain", (f"NOT improved: training made the student worse (last epoch {last:.{d}f} "
                                   f"{'>' if lower_is_better else '<'} {before:.{d}f} before), so its starting "
                                   f"weights were kept; {line}")
    else:
        verdict, msg = "no gain", f"NOT improved: {line}"
    note = (result.get("kept") or {}).get("note")
    if note and verdict == "improved" and (result.get("kept") or {}).get("epoch") != result.get("epochs"):
        msg += f" ({note})"
    return {"verdict": verdict, "worse": worse, "training_made_worse": made_worse, "message": msg}


def check_inputs(*, data: str, student: str, eval: str | None, epochs: int | None, seed: int, device: str,
                 out: str | None, dataset_optional: bool = False) -> str | None:
    """Every check that needs no training, before a flow run starts (one line, no Prefect traceback):
    the dataset ``data`` names (returned), the options, where the student goes, the student model
    (a text student as ``kdata train`` checks it: ``check_text_student``) and the eval set's source.

    ``dataset_optional`` (``kdata serve``: the curate flow writes the dataset at run time): with no
    complete dataset yet, the student and eval set the config names are checked alone; None is returned."""
    from kdata.models.spec import load_model, pick_device
    from kdata.pools.spec import open_pool

    if epochs is not None and epochs < 1:  # named alone: this command has no --batch-size
        raise KdataError(f"--epochs {epochs}: must be at least 1")
    pick_device(device)  # an unknown device, or cuda without one: one line
    try:
        shards = latest_dataset(data)
    except KdataError:
        if not dataset_optional:
            raise
        # the kind of student is unknown until the data exists: the image defaults (swapped for the text
        # ones on text shards) are not loaded; what the config names is
        if student != IMAGE_STUDENT:
            load_model(student, device="cpu")
        if eval and eval != IMAGE_EVAL:
            open_pool(eval, what="evaluation set")
        return None
    text = text_run(shards, student, eval)
    if text is not None:
        student, eval = text
    else:
        train_options(epochs=epochs, seed=seed, device=device)
    student_dir(shards, out, overwrite=True)  # a scheduled run replaces the last run's student in OUT
    if text is not None:
        check_text_student(shards, student)
    else:
        load_model(student, device="cpu")
    if eval:
        open_pool(eval, what="evaluation set")
    return shards


def check_text_student(shards: str, student: str) -> None:
    """What ``kdata train`` checks before training a text student (``kdata.training.text.student_shards``)."""
    from kdata.models.hf import load_text_model
    from kdata.training.text import student_shards, text_shard_kind

    kind = text_shard_kind(shards)
    student_shards(shards, load_text_model(student, device="cpu", precision="fp32"), kind=kind, spec=student,
                   batch_size=1)


@task(name="train-student", retries=1, retry_delay_seconds=5,
      retry_condition_fn=lambda task, run, state: retryable(state))
@logs_warnings
def train_task(shards: str, *, student: str, eval: str | None, train: dict, out: str) -> dict:
    """Train with the library trainer (the function behind ``kdata train``); a small JSON-able summary."""
    from kdata.pipeline.distill import train_student
    from kdata.training.train import TrainConfig

    log = train_student(shards=shards, student=student, eval=eval, config=TrainConfig(**train), out=out,
                        overwrite=True)
    return {k: log[k] for k in RESULT_KEYS if k in log}


@task(name="train-text-student", retries=1, retry_delay_seconds=5,
      retry_condition_fn=lambda task, run, state: retryable(state))
@logs_warnings
def train_text_task(shards: str, *, student: str, eval: str | None, train: dict, out: str) -> dict:
    """Train with the text trainer (the function behind ``kdata train`` on text shards); a JSON-able summary."""
    from kdata.training.text import TextTrainConfig, train_text

    log = train_text(shards=shards, student=student, eval=eval, config=TextTrainConfig(**train), out=out)
    return {k: log[k] for k in TEXT_RESULT_KEYS if k in log}


@flow(name="distill", log_prints=True)
@logs_warnings
def distill(data: str = DEFAULT_DATA, student: str = "builtin:digits-student",
            eval: str | None = "builtin:digits-test", epochs: int | None = None, seed: int = 0,
            device: str = "auto", out: str | None = None, keep_last: bool = False) -> dict:
    """Train ``student`` on the newest curated dataset matching ``data``; record accuracy before/after.

    ``epochs`` None: the trainer's default. ``out`` None: ``DATASET-student`` beside the dataset; given,
    each run replaces the student the last one saved there. The weights that score best on the eval set
    (the starting ones included) are saved, as ``kdata train`` saves them; ``keep_last``: the last epoch's
    (``kdata train --keep-last``).
    """
    logger = get_run_logger()
    shards = latest_dataset(data)
    text = text_run(shards, student, eval)
    target = student_dir(shards, out, overwrite=True)
    if text is not None:  # a text student (kdata.training.text)
        student, eval = text
        train = {k: v for k, v in {"epochs": epochs, "seed": seed, "device": device}.items() if v is not None}
        train["keep_best"] = not keep_last  # TextTrainConfig's default is False: kdata train's choice, set here
        result = train_text_task(shards, student=student, eval=eval, train=train, out=target)
        verdict = outcome(result, eval=eval, lower_is_better=result.get("metric", "perplexity") == "perplexity")
    else:
        train = {**train_options(epochs=epochs, seed=seed, device=device), "keep_best": not keep_last}
        result = train_task(shards, student=student, eval=eval, train=train, out=target)
        verdict = outcome(result, eval=eval)
    md = (f"# kdata distill: {verdict['verdict']}\n\n**{verdict['message']}**\n\n- dataset: `{shards}`\n"
          f"- student: `{student}` → `{target}`\n- eval: `{eval}`\n- epochs: {result.get('epochs')} on "
          f"{result.get('n_train')} rows\n")
    create_markdown_artifact(md, key="distill-summary", description="student accuracy (text: perplexity) on the eval set")
    (logger.info if verdict["verdict"] == "improved" else logger.warning)("distill %s: %s", shards,
                                                                         verdict["message"])
    return {"data": shards, "out": target, **result, **verdict}


@shows_lines
def main(argv: list[str] | None = None) -> int:
    """``python flows/distill.py``: check the input, then run the flow once."""
    from kdata.training.train import TrainConfig

    p = argparse.ArgumentParser(prog="flows/distill.py", description="Run the kdata distill flow once: train the "
                                "student on the newest complete curated dataset and report its accuracy.")
    p.add_argument("--data", default=DEFAULT_DATA,
                   help="curated dataset dir, or a glob whose newest complete match is used (default: %(default)s)")
    p.add_argument("--student", default="builtin:digits-student", help="student model spec (default: %(default)s)")
    p.add_argument("--eval", default="builtin:digits-test", help="eval set (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=None,
                   help=f"training epochs (default: the trainer's, {TrainConfig().epochs})")
    p.add_argument("--seed", type=int, default=0, help="training seed (default: %(default)s)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default: %(default)s)")
    p.add_argument("--out", default=None, help="where to save the student (default: DATASET-student beside it)")
    p.add_argument("--keep-last", action="store_true",
                   help="keep the last epoch's weights even when an earlier epoch (or the start) scored better "
                        "on the eval set (as kdata train --keep-last)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object on stdout")
    a = p.parse_args(argv)
    try:
        from kdata.flows.inputs import check_api

        check_api()
        shards = check_inputs(data=a.data, student=a.student, eval=a.eval, epochs=a.epochs, seed=a.seed,
                              device=a.device, out=a.out)
        r = distill(data=shards, student=a.student, eval=a.eval, epochs=a.epochs, seed=a.seed, device=a.device,
                    out=a.out, keep_last=a.keep_last)
    except KdataError as exc:
        print(f"distill: error: {exc}", file=sys.stderr)
        return exc.exit_code
    if a.json:
        print(json.dumps(r, default=str))
    else:
        print(f"distill: {r['data']} → {r['out']}\n  {r['message']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
