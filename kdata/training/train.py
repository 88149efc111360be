"""Distil a student from curated shards: the teacher's stored top-k soft labels are the targets.

No teacher forward runs during training; the losses and the reconstruction of the teacher's
distribution from top-k are in ``kdata.training.losses``. Each epoch is the batches of one seeded
order (``ShardDataset.batches``), so the student does not depend on ``--workers``; the learning rate
follows the steps really planned (``kdata.training.budget.Schedule``), re-planned when a KD³
re-selection changes the set's size. With an output directory the state after each epoch is kept
in ``OUT/.resume/`` and a rerun after a kill goes on from it (``kdata.training.checkpoint``).
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, replace
from pathlib import Path

import torch

from kdata.core.atomic import sha256_file, write_json
from kdata.core.errors import KdataError, brief
from kdata.core.lock import exclusive
from kdata.core.threads import one_thread
from kdata.models.sidecar import pool_class_names
from kdata.models.spec import Model, load_model, pick_device
from kdata.training.budget import Schedule, plan_steps, resolve_alpha
from kdata.training.checkpoint import (Checkpoints, kept_rng, loop_state, restore_loop, shards_fingerprint,
                                       weights_checksum)
from kdata.training.checkpoint import seeded_rng  # noqa: F401  (re-exported: callers import it from here)
from kdata.training.config import TrainConfig  # noqa: F401  (re-exported)
from kdata.training.epoch_loader import EpochLoader, auto_workers
from kdata.training.evaluate import EvalSet, check_class_order
from kdata.training.losses import batch_loss
from kdata.training.shard_dataset import (ShardDataset, dataset_root, shard_class_names,
                                           verify_source)
from kdata.training.train_log import training_log
from kdata.training.weights import Best, reinit_  # noqa: F401  (re-exported: callers import them from here)

MAX_UNDECODABLE = 0.10  # an epoch with a larger share of rows whose image cannot be decoded is refused


@contextmanager
def _threads_for(net: torch.nn.Module, device: torch.device):
    """One intra-op thread for tiny models on CPU: their ops are too small to split, and on a
    shared machine spinning OpenMP threads make them many times slower."""
    small = sum(p.numel() for p in net.parameters()) < 1_000_000
    if device.type != "cpu" or not small:
        yield
        return
    with one_thread():
        yield


def train(student: Model, shards, *, config: TrainConfig = TrainConfig(), eval_set: EvalSet | None = None,
          reselector=None, progress=None, checkpoints: Checkpoints | None = None) -> dict:
    """Distil ``student`` (trained in place) on the curated shards at ``shards``. Returns the training log.

    With an eval set evaluated every epoch and ``config.keep_best``, ``student`` ends with the weights
    that scored best on it (possibly its starting weights). ``progress(stage, done, total)`` is told
    the rows done in each epoch (stage ``epoch E/N``) and the evaluation before training. With
    ``checkpoints`` the state after each epoch is saved there, and a run killed before the end goes on
    from its last one (``kdata.training.checkpoint``).
    """
    device = pick_device(config.device)
    with _threads_for(student.module, device), seeded_rng(config.seed, device):
        return _train(student, shards, config=config, eval_set=eval_set, reselector=reselector, progress=progress,
                      checkpoints=checkpoints)


def check_config(config: TrainConfig) -> None:
    """Every training option checked before any work (one KdataError line each)."""
    if config.loss not in ("kd", "nkd"):
        raise KdataError(f"--loss {config.loss}: expected kd or nkd")
    if config.alpha is not None and not 0.0 <= config.alpha <= 1.0:
        raise KdataError(f"--alpha {config.alpha}: must be within [0, 1]")
    if config.steps < 0:
        raise KdataError(f"--steps {config.steps}: must be ≥ 0 (0: train for --epochs)")
    if not (math.isfinite(config.temperature) and config.temperature > 0):
        raise KdataError(f"--temperature {config.temperature}: must be a finite number > 0")
    if config.epochs < 1 or config.batch_size < 1:
        raise KdataError("--epochs and --batch-size must be at least 1")


def _optimiser(params, config: TrainConfig, schedule: Schedule):
    """AdamW, its learning rate scaled at each step by ``schedule`` (warm-up, then cosine decay to zero)."""
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, schedule.factor)


def _open(path, student: Model, config: TrainConfig) -> ShardDataset:
    return ShardDataset(path, input_size=student.input_size, mean=student.mean, std=student.std,
                        interpolation=student.interpolation, shuffle=True, seed=config.seed,
                        num_classes=student.num_classes)


def _open_shards(shards, student: Model, config: TrainConfig) -> tuple[ShardDataset, list[str]]:
    """The shards, their class order checked against the student's; notes for the log."""
    ds = _open(shards, student, config)
    if len(ds) == 0:
        raise KdataError(f"{shards}: the curated shards hold no rows")
    names = ds.class_names if ds.class_names is not None else shard_class_names(shards)
    if names is None:
        note = check_class_order(ds, student)
        return ds, [note] if note else []
    if list(names) != list(student.class_names):
        raise KdataError(f"{shards}: shards were labelled with {len(names)} classes ({brief(names)}) but the "
                         f"student {student.spec} predicts {len(student.class_names)} ({brief(student.class_names)}); "
                         "give the student a sidecar with the shards' class_names (docs/pools-and-models.md)")
    return ds, []


def _trainable(student: Model, device, config: TrainConfig) -> list[torch.nn.Parameter]:
    net = student.module.to(device)
    params = [p for p in net.parameters() if p.is_floating_point()]
    if not params:
        raise KdataError(f"{student.spec}: the student has no trainable parameters")
    for p in params:
        p.requires_grad_(True)
    if config.reinit and not reinit_(net):
        raise KdataError(f"{student.spec}: --reinit: this student has no layers to initialise afresh (an exported "
                         ".pt2 or TorchScript file keeps weights, not initialisers); train it from its weights, or "
                         "give a builtin: or timm: student")
    return params


def _evaluate(eval_set: EvalSet, student: Model, device, progress, stage: str) -> float:
    if progress:
        progress(stage)
    acc = eval_set.accuracy(student, device=device)
    if progress:
        progress(stage, 1, 1)
    return acc


def _epoch(student: Model, loader: EpochLoader, epoch: int, *, stage: str, max_steps: float, config: TrainConfig,
           opt, sched, gen, device, progress, done: int) -> dict:
    """One pass over the epoch's batches, stopped early after ``max_steps`` optimiser steps (``--steps``):
    rows trained on, steps, mean loss, and the rows left out because their image cannot be decoded."""
    n, ds, pin = int(loader.plan.starts[-1]), loader.ds, device.type == "cuda"
    net = student.module
    net.train()
    out = {"rows": 0, "steps": 0, "loss": 0.0, "undecodable": 0, "first_undecodable": None, "read": 0}
    bn1d = _has_bn1d(net)
    for b in loader.epoch(epoch):
        if b.error:
            raise KdataError(b.error)
        if out["steps"] >= max_steps:
            break
        out["read"] += len(b.y) + b.undecodable
        out["undecodable"] += b.undecodable
        out["first_undecodable"] = out["first_undecodable"] or b.first_undecodable or None
        if len(b.y) and not (len(b.y) < 2 and bn1d):
            loss, k = batch_loss(student, b[:5], config=config, gen=gen, device=device, pin=pin,
                                  num_classes=student.num_classes, score_temperature=ds.temperature)
            if not torch.isfinite(loss):
                raise KdataError(_diverged(student, loss, stage=stage, done=done + out["steps"], config=config))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            out["rows"], out["steps"] = out["rows"] + k, out["steps"] + 1
            out["loss"] += float(loss.detach()) * k
        if progress:
            progress(stage, out["read"], n)
    if progress and out["read"] != n:  # stopped after --steps: finish the bar
        progress(stage, n, n)
    out["loss"] /= max(out["rows"], 1)
    return out


def _diverged(student: Model, loss, *, stage: str, done: int, config: TrainConfig) -> str:
    """The message for a non-finite loss. The soft labels were checked as they were read, so it is the student."""
    if done == 0:
        return (f"{student.spec}: non-finite loss ({loss.item()}) on the first batch, before any update: the soft "
                "labels were checked and are finite, so the student's own outputs are not (check its weights)")
    return (f"non-finite loss ({loss.item()}) in {stage} after {done} optimiser steps at --lr {config.lr}: the soft "
            "labels were checked and are finite, so the student's weights diverged in training")


def _check_epoch(entry: dict, *, n: int, shards, capped: bool) -> None:
    """Refuse an epoch that trained on nothing, or whose images mostly cannot be decoded (one line each)."""
    bad, read = entry["undecodable"], entry["read"]
    if bad and bad > MAX_UNDECODABLE * read:
        path, _, row = entry["first_undecodable"].rpartition(" row ")
        raise KdataError(f"{path}: {bad} of the {read} rows read in epoch {entry['epoch']} have an image that cannot "
                         f"be decoded (the first: row {row}); more than {MAX_UNDECODABLE:.0%}, not training on them")
    if entry["steps"] == 0 and not capped:
        why = ("every batch held a single row, which a student with BatchNorm1d cannot train on"
               if read else "it read no rows")
        raise KdataError(f"{shards}: epoch {entry['epoch']} of {n} rows took no optimiser step: {why}")


def _reselect(reselector, student: Model, *, epoch: int, budget: int, config: TrainConfig, device):
    """KD³: re-select ``budget`` rows (always the size of the set training started from) with the current
    student; the new set and the log entry. A re-selection that keeps no row stops the run (one line).
    It leaves the global random generators where they were (``kept_rng``)."""
    with kept_rng(device):
        path, info = reselector(student, epoch=epoch, budget=budget)
    ds = _open(path, student, config)
    if len(ds) == 0:
        tau = config.reselect_threshold
        why = (f"--reselect-threshold {tau} rejects every row; lower it" if tau is not None else "nothing to train on")
        raise KdataError(f"{path}: the re-selection at epoch {epoch} kept no row: {why}")
    return ds, {"epoch": epoch, "budget": budget, **info}


def _train(student: Model, shards, *, config: TrainConfig, eval_set: EvalSet | None, reselector,
           progress, checkpoints: Checkpoints | None) -> dict:
    check_config(config)
    t0 = time.perf_counter()
    device = pick_device(config.device)
    ds, notes = _open_shards(shards, student, config)
    alpha = resolve_alpha(config.alpha, dataset_root(shards))
    config = replace(config, alpha=alpha["value"])
    params = _trainable(student, device, config)
    net = student.module
    n0, per_epoch = len(ds), math.ceil(len(ds) / config.batch_size)
    epochs, total = plan_steps(n0, batch_size=config.batch_size, epochs=config.epochs, steps=config.steps)
    schedule = Schedule(total)
    opt, sched = _optimiser(params, config, schedule)
    gen = torch.Generator(device=device).manual_seed(config.seed)
    state = checkpoints.open(_key_parts(shards, ds, student, config, eval_set), device) if checkpoints else None
    acc_before = (state["acc_before"] if state else
                  _evaluate(eval_set, student, device, progress, "evaluating") if eval_set is not None else None)
    every = eval_set is not None and config.eval_every_epoch
    best = Best(net, acc_before) if every and config.keep_best else None
    objects = {"net": net, "opt": opt, "sched": sched, "schedule": schedule, "gen": gen, "best": best,
               "device": device}
    epochs_log, reselections, done, epoch, loader = [], [], 0, 0, None
    if state:  # a killed run's last finished epoch: go on from there
        restore_loop(state, **objects)
        epochs_log, reselections, done, epoch = state["history"], state["reselections"], state["done"], state["epoch"]
        ds = _open(state["ds"], student, config) if state["ds"] else ds
        checkpoints.announce(state, epochs=epochs)
    while (done < total if config.steps else epoch < epochs) and epoch < 100 * epochs:
        if reselector is not None and config.reselect_every and epoch > 0 and epoch % config.reselect_every == 0:
            ds, info = _reselect(reselector, student, epoch=epoch, budget=n0, config=config, device=device)
            reselections.append(info)
        if not config.steps:  # the steps still to come, from the set trained on now
            schedule.replan(done, (epochs - epoch) * math.ceil(len(ds) / config.batch_size))
        if loader is None or loader.ds is not ds:  # workers start once per training set
            loader = loader.close() if loader is not None else None
            loader = EpochLoader(ds, batch_size=config.batch_size, workers=auto_workers(config.workers, len(ds)),
                                 pin=device.type == "cuda")
        stage = f"epoch {epoch + 1}/{max(epochs, epoch + 1)}"
        entry = {"epoch": epoch + 1, **_epoch(student, loader, epoch, stage=stage,
                                              max_steps=total - done if config.steps else math.inf, config=config,
                                              opt=opt, sched=sched, gen=gen, device=device, progress=progress,
                                              done=done)}
        _check_epoch(entry, n=len(ds), shards=shards, capped=bool(config.steps) and done + entry["steps"] >= total)
        del entry["read"]
        done += entry["steps"]
        epoch += 1
        last_one = done >= total if config.steps else epoch == epochs
        if eval_set is not None and (every or last_one):
            entry["accuracy"] = eval_set.accuracy(student, device=device)
            if best is not None:
                best.offer(net, epoch=epoch, value=entry["accuracy"])
        epochs_log.append(entry)
        if checkpoints is not None:
            checkpoints.save(loop_state(epoch=epoch, done=done, history=epochs_log, reselections=reselections,
                                        acc_before=acc_before, ds=[str(f) for f in ds.files] if reselections else None,
                                        **objects))
    if loader is not None:
        loader.close()
    last = epochs_log[-1].get("accuracy")
    kept = (best.kept(net, epochs=epoch, accuracy_last=last, where=eval_set.spec) if best is not None
            else {"epoch": epoch, "accuracy": last, "note": None})
    net.eval()
    return {**training_log(config, kept=kept, before=acc_before, last=last, history=epochs_log, done=done, n0=n0,
                   per_epoch=per_epoch, schedule=schedule, alpha=alpha, reselections=reselections, notes=notes,
                   ds=ds, student=student, eval_set=eval_set, device=device, seconds=time.perf_counter() - t0),
            "resumed_from_epoch": state["epoch"] if state else None}


def _key_parts(shards, ds: ShardDataset, student: Model, config: TrainConfig, eval_set: EvalSet | None) -> dict:
    """What decides a run's result, for its resume key (the decode workers change the speed only; the
    device counts as resolved, ``run_key``)."""
    return {"shards": shards_fingerprint(ds.files, dataset_root(shards)), "student": student.spec,
            "weights": weights_checksum(student.module),
            "config": {k: v for k, v in asdict(config).items() if k not in ("workers", "device")},
            "eval": None if eval_set is None else [eval_set.spec, len(eval_set)]}


def _has_bn1d(net: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.nn.BatchNorm1d) for m in net.modules())


# ------------------------------------------------------------------------------------------------
# Dynamic re-selection (KD³) and saving


def save_student(student: Model, out: str | Path, *, log: dict) -> tuple[dict, str]:
    """Write ``OUT/student.pt2`` (+ sidecar ``student.json``) and ``OUT/train_log.json``; a TorchScript
    student (``.pt``) is written back as TorchScript, ``OUT/student.pt`` (torch.export cannot trace it).

    The log, which records the student's sha256, goes first and is written again last: a crash in
    between leaves weights without a log, never a log beside weights it does not describe. Returns the
    files written and the student's sha256."""
    from kdata.models.files import export_model

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_log.json").unlink(missing_ok=True)
    net = student.module
    kind = "pt" if isinstance(getattr(net, "program", net), torch.jit.ScriptModule) else "pt2"
    device = next(iter(net.parameters()), torch.empty(0)).device
    net.to("cpu").eval()
    path = export_model(net, out / f"student.{kind}", input_size=student.input_size, mean=student.mean,
                        std=student.std, class_names=student.class_names, kind=kind)
    net.to(device)
    files = {"student": str(path), "sidecar": str(Path(path).with_suffix(".json")),
             "log": str(out / "train_log.json")}
    sha = sha256_file(path)
    write_json(out / "train_log.json", {**log, "files": files, "student_sha256": sha})
    return files, sha


def run_train(*, shards, student: str, eval: str | None, config: TrainConfig, out: str | None = None,
              progress=None, reselector_for=None, verify: bool = True, resume_key: dict | None = None,
              test: str | None = None, request: str | None = None) -> dict:
    """Load the student, train on ``shards`` (first checked against its manifest unless ``verify=False``),
    evaluate on ``eval``, save to ``out`` (nothing is saved when ``out`` is None). Returns the log.
    ``progress(stage, done, total)`` follows the epochs (see ``train``).

    With ``out``, OUT is locked for the run and the state after each epoch is kept in ``OUT/.resume/``:
    the same call after a kill goes on from the last finished epoch (``kdata.training.checkpoint``;
    ``resume_key``: what else decides the result, e.g. the re-selection pool and teacher). The states
    are removed once the student is saved.

    ``reselector_for(model, *, work_dir, device)`` builds the re-selector of ``--reselect-every``
    (``kdata.pipeline.distill``, which writes each re-selection through the curation core).
    """
    if out and Path(out).exists() and not Path(out).is_dir():
        raise KdataError(f"{out}: exists and is not a directory (--out names the directory for the student)")
    with exclusive(out) if out else nullcontext():
        return _run_train(shards=shards, student=student, eval=eval, config=config, out=out, progress=progress,
                          reselector_for=reselector_for, verify=verify, resume_key=resume_key, test=test,
                          request=request)


def _run_train(*, shards, student, eval, config, out, progress, reselector_for, verify, resume_key, test,
               request=None) -> dict:
    verified = verify_source(shards) if verify else False
    device = pick_device(config.device)
    with pool_class_names(shard_class_names(shards)):  # a sidecar-less student takes the shards' classes
        model = load_model(student, device=device)
    eval_set = EvalSet(eval, model=model) if eval else None
    test_set = EvalSet(test, model=model) if test else None  # opened (and checked) before any training
    reselector, tmp, work = None, None, None
    if config.reselect_every:
        if reselector_for is None:
            raise KdataError("--reselect-every needs a pool to re-select from (kdata.pipeline.distill.train_student)")
        work = Path(out) / "reselect" if out else Path(tmp := tempfile.mkdtemp(prefix="kdata-reselect-"))
        reselector = reselector_for(model, work_dir=work, device=device)
    checkpoints = (Checkpoints(out, extra=resume_key, on_start=lambda epoch: drop_reselections(work, epoch),
                               request=request) if out else None)
    try:
        log = train(model, shards, config=config, eval_set=eval_set, reselector=reselector, progress=progress,
                    checkpoints=checkpoints)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    log["verified"] = verified
    if test_set is not None:  # the weights kept, on a set that chose nothing
        log["test"] = {"spec": test, "n": len(test_set), "accuracy": test_set.accuracy(model, device=device)}
    if out:
        log["out"] = str(out)
        log["files"], log["student_sha256"] = save_student(model, out, log=log)
        checkpoints.clear()
    return json.loads(json.dumps(log, default=str))


def drop_reselections(work: Path | None, epoch: int) -> None:
    """Remove the re-selections under ``work`` made at epoch ``epoch`` or later: by an earlier run into the
    same OUT (another student's, when training starts afresh: ``epoch`` 0), or by a killed run after the
    state it resumes from. Those before ``epoch`` are the sets a resumed run trained on: kept."""
    if work is None or not work.is_dir():
        return
    if epoch == 0:
        shutil.rmtree(work, ignore_errors=True)
        return
    for d in work.glob("reselect-epoch*"):
        number = d.name.removeprefix("reselect-epoch")
        if number.isdigit() and int(number) >= epoch:
            shutil.rmtree(d, ignore_errors=True)
