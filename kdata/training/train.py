"""Distil a student from curated shards: the teacher's stored top-k soft labels are the targets.

No teacher forward runs during training; the losses and the reconstruction of the teacher's
distribution from top-k are in ``kdata.training.losses``.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from kdata.core.atomic import sha256_file, write_json
from kdata.core.errors import KdataError, brief
from kdata.core.threads import one_thread
from kdata.models.images import worker_context
from kdata.models.sidecar import pool_class_names
from kdata.models.spec import Model, load_model, pick_device
from kdata.training.budget import plan_steps, resolve_alpha
from kdata.training.config import TrainConfig  # noqa: F401  (re-exported)
from kdata.training.evaluate import EvalSet, autocast
from kdata.training.losses import kd_loss, nkd_loss, soft_targets
from kdata.training.shard_dataset import ShardDataset, dataset_root, shard_class_names, verify_source
from kdata.training.weights import Best, reinit_  # noqa: F401  (re-exported: callers import them from here)


# ------------------------------------------------------------------------------------------------
# Targets and losses


# ------------------------------------------------------------------------------------------------
# Evaluation


# ------------------------------------------------------------------------------------------------
# Training

def _workers(setting, n_rows: int) -> int:
    if setting != "auto":
        return int(setting)
    import os

    # decoding 32×32 thumbnails is cheaper than forking; use workers for real data sizes
    return 0 if n_rows < 20_000 else max(1, min(4, (os.cpu_count() or 2) - 1))


@contextmanager
def _threads_for(net: torch.nn.Module, device: torch.device):
    """One intra-op thread for tiny models on CPU: their ops are too small to split, and on a
    shared machine spinning OpenMP threads make them many times slower (measured 16× on 2 busy cores)."""
    small = sum(p.numel() for p in net.parameters()) < 1_000_000
    if device.type != "cpu" or not small:
        yield
        return
    with one_thread():
        yield


def jitter(x: torch.Tensor, gen: torch.Generator, *, degrees: float = 10.0, scale: float = 0.08,
           shift: float = 0.08) -> torch.Tensor:
    """Batched small random affine jitter (rotation ±degrees, scale ±scale, shift ±shift of the size)."""
    n = x.shape[0]

    def u(lim):
        return (torch.rand(n, generator=gen, device=x.device) * 2 - 1) * lim

    ang = u(math.radians(degrees))
    sc = 1 + u(scale)
    cos, sin = torch.cos(ang) / sc, torch.sin(ang) / sc
    theta = torch.stack([torch.stack([cos, -sin, u(2 * shift)], 1), torch.stack([sin, cos, u(2 * shift)], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, align_corners=False, padding_mode="border")


def train(student: Model, shards, *, config: TrainConfig = TrainConfig(), eval_set: EvalSet | None = None,
          reselector=None, progress=None) -> dict:
    """Distil ``student`` (trained in place) on the curated shards at ``shards``. Returns the training log.

    With an eval set evaluated every epoch and ``config.keep_best``, ``student`` ends with the weights
    that scored best on it (possibly its starting weights). ``progress(stage, done, total)`` is told
    the rows done in each epoch (stage ``epoch E/N``) and the evaluation before training.
    """
    device = pick_device(config.device)
    with _threads_for(student.module, device), seeded_rng(config.seed, device):
        return _train(student, shards, config=config, eval_set=eval_set, reselector=reselector, progress=progress)


@contextmanager
def seeded_rng(seed: int, device: torch.device):
    """torch's global RNG seeded with ``seed`` for training (as ``torch.manual_seed`` did: the CPU
    generator, and every CUDA one on a CUDA run) and the caller's state restored afterwards, so a
    library call to ``train`` leaves the caller's random stream where it was. A CPU run does not
    touch CUDA (``torch.manual_seed`` would queue a lazy seed of every CUDA generator)."""
    cuda = device.type == "cuda"
    with torch.random.fork_rng(devices=list(range(torch.cuda.device_count())) if cuda else []):
        torch.random.default_generator.manual_seed(int(seed))
        if cuda:
            torch.cuda.manual_seed_all(int(seed))
        yield


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


def _batch_loss(student: Model, batch, *, config: TrainConfig, gen, device, pin: bool, num_classes: int,
                score_temperature: float) -> tuple[torch.Tensor, int]:
    """The distillation loss of one batch (soft targets rebuilt from the stored top-k)."""
    x, idx, logit, prob, y = (t.to(device, non_blocking=pin) for t in batch)
    if config.augment:
        x = jitter(x, gen)
    with autocast(device):
        s_logits, _ = student.forward(x)
    s_logits = s_logits.float()
    target = soft_targets(idx, logit, prob, num_classes=num_classes, temperature=config.temperature,
                          score_temperature=score_temperature)
    if config.loss == "kd":
        return kd_loss(s_logits, target, y, temperature=config.temperature, alpha=config.alpha), len(y)
    t1 = soft_targets(idx, logit, prob, num_classes=num_classes, temperature=1.0, score_temperature=score_temperature)
    return nkd_loss(s_logits, t1, target, y, temperature=config.temperature, alpha=config.alpha,
                    gamma=config.nkd_gamma), len(y)


def _optimiser(params, config: TrainConfig, *, total: int):
    """AdamW with a 5% linear warm-up, then cosine decay to zero over ``total`` steps."""
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    warm = max(1, total // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    return opt, sched


def _open_shards(shards, student: Model, config: TrainConfig) -> ShardDataset:
    ds = ShardDataset(shards, input_size=student.input_size, mean=student.mean, std=student.std,
                      interpolation=student.interpolation, shuffle=True, seed=config.seed)
    if len(ds) == 0:
        raise KdataError(f"{shards}: the curated shards hold no rows")
    names = ds.class_names
    if names is not None and list(names) != list(student.class_names):
        raise KdataError(f"{shards}: shards were labelled with {len(names)} classes ({brief(names)}) but the "
                         f"student {student.spec} predicts {len(student.class_names)} ({brief(student.class_names)}); "
                         "give the student a sidecar with the shards' class_names (docs/pools-and-models.md)")
    return ds


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


def _epoch(student: Model, ds: ShardDataset, *, epoch: int, epochs: int, max_steps: int, config: TrainConfig, opt,
           sched, gen, device, progress) -> dict:
    """One pass over ``ds``, stopped early after ``max_steps`` optimiser steps: rows seen, steps, mean loss."""
    workers = _workers(config.workers, len(ds))
    pin = device.type == "cuda"
    loader = DataLoader(ds, batch_size=config.batch_size, num_workers=workers, pin_memory=pin,
                        prefetch_factor=4 if workers else None, multiprocessing_context=worker_context(workers))
    net = student.module
    net.train()
    stage = f"epoch {epoch + 1}/{epochs}"
    seen, steps, loss_sum, bn1d = 0, 0, 0.0, _has_bn1d(net)
    for x, idx, logit, prob, y in loader:
        if steps >= max_steps:
            break
        if len(y) < 2 and bn1d:
            continue
        loss, n = _batch_loss(student, (x, idx, logit, prob, y), config=config, gen=gen, device=device, pin=pin,
                              num_classes=student.num_classes, score_temperature=ds.temperature)
        if not torch.isfinite(loss):
            raise KdataError(f"training diverged at epoch {epoch + 1} (loss {loss.item()}); lower --lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        seen, steps = seen + n, steps + 1
        loss_sum += float(loss.detach()) * n
        if progress:
            progress(stage, seen, len(ds))
    if progress and seen != len(ds):  # rows skipped (a batch of one with BatchNorm1d) or steps done: finish the bar
        progress(stage, len(ds), len(ds))
    return {"epoch": epoch + 1, "rows": seen, "steps": steps, "loss": loss_sum / max(seen, 1)}


def _train(student: Model, shards, *, config: TrainConfig, eval_set: EvalSet | None, reselector,
           progress) -> dict:
    check_config(config)
    t0 = time.perf_counter()
    device = pick_device(config.device)
    ds = _open_shards(shards, student, config)
    alpha = resolve_alpha(config.alpha, dataset_root(shards))
    config = replace(config, alpha=alpha["value"])
    params = _trainable(student, device, config)
    net = student.module
    acc_before = _evaluate(eval_set, student, device, progress, "evaluating") if eval_set is not None else None
    every = eval_set is not None and config.eval_every_epoch
    best = Best(net, acc_before) if every and config.keep_best else None
    epochs, total = plan_steps(len(ds), batch_size=config.batch_size, epochs=config.epochs, steps=config.steps)
    opt, sched = _optimiser(params, config, total=total)
    gen = torch.Generator(device=device).manual_seed(config.seed)
    epochs_log, reselections, done, epoch = [], [], 0, 0
    while (done < total if config.steps else epoch < epochs) and epoch < 100 * epochs:
        if reselector is not None and config.reselect_every and epoch > 0 and epoch % config.reselect_every == 0:
            path, info = reselector(student, epoch=epoch, budget=len(ds))
            reselections.append({"epoch": epoch, **info})
            ds = ShardDataset(path, input_size=student.input_size, mean=student.mean, std=student.std,
                              interpolation=student.interpolation, shuffle=True, seed=config.seed)
        ds.set_epoch(epoch)
        entry = _epoch(student, ds, epoch=epoch, epochs=max(epochs, epoch + 1), max_steps=total - done,
                       config=config, opt=opt, sched=sched, gen=gen, device=device, progress=progress)
        done += entry["steps"]
        epoch += 1
        last_one = done >= total if config.steps else epoch == epochs
        if eval_set is not None and (every or last_one):
            entry["accuracy"] = eval_set.accuracy(student, device=device)
            if best is not None:
                best.offer(net, epoch=epoch, accuracy=entry["accuracy"])
        epochs_log.append(entry)
    last = epochs_log[-1].get("accuracy")
    kept = (best.restore(net, epochs=epoch, accuracy_last=last, where=eval_set.spec) if best is not None
            else {"epoch": epoch, "accuracy": last, "note": None})
    net.eval()
    return {
        "accuracy": kept["accuracy"],  # of the weights returned (and saved): the best epoch's with keep_best
        "accuracy_before": acc_before,
        "accuracy_last": last,
        "kept": kept,
        "worse_than_before": None if last is None or acc_before is None else last < acc_before,
        "n_train": len(ds),
        "epochs": epoch,
        "steps": done,
        "protocol": {"kind": "equal-steps" if config.steps else "epochs", "steps_requested": config.steps or None,
                     "epochs_requested": None if config.steps else config.epochs,
                     "steps_per_epoch": math.ceil(len(ds) / config.batch_size)},
        "alpha": alpha,
        "seconds": time.perf_counter() - t0,
        "loss": epochs_log[-1]["loss"],
        "history": epochs_log,
        "reselections": reselections,
        "config": {k: v for k, v in asdict(config).items()},
        "device": str(device),
        "shards": [str(f) for f in ds.files],
        "score_temperature": ds.temperature,
        "student": student.spec,
        "eval": eval_set.spec if eval_set is not None else None,
        "n_eval": len(eval_set) if eval_set is not None else 0,
    }


def _has_bn1d(net: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.nn.BatchNorm1d) for m in net.modules())


# ------------------------------------------------------------------------------------------------
# Dynamic re-selection (KD³) and saving


def save_student(student: Model, out: str | Path, *, log: dict) -> dict:
    """Write ``OUT/student.pt2`` (+ sidecar ``student.json``) and ``OUT/train_log.json``; a TorchScript
    student (``.pt``) is written back as TorchScript, ``OUT/student.pt`` (torch.export cannot trace it).

    The log, which records the student's sha256, goes first and is written again last: a crash in
    between leaves weights without a log, never a log beside weights it does not describe."""
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
    write_json(out / "train_log.json", {**log, "files": files, "student_sha256": sha256_file(path)})
    return files


def run_train(*, shards, student: str, eval: str | None, config: TrainConfig, out: str | None = None,
              progress=None, reselector_for=None, verify: bool = True) -> dict:
    """Load the student, train on ``shards`` (first checked against its manifest unless ``verify=False``),
    evaluate on ``eval``, save to ``out`` (nothing is saved when ``out`` is None). Returns the log.
    ``progress(stage, done, total)`` follows the epochs (see ``train``).

    ``reselector_for(model, *, work_dir, device)`` builds the re-selector of ``--reselect-every``
    (``kdata.pipeline.distill``, which writes each re-selection through the curation core).
    """
    if out and Path(out).exists() and not Path(out).is_dir():
        raise KdataError(f"{out}: exists and is not a directory (--out names the directory for the student)")
    verified = verify_source(shards) if verify else False
    device = pick_device(config.device)
    with pool_class_names(shard_class_names(shards)):  # a sidecar-less student takes the shards' classes
        model = load_model(student, device=device)
    eval_set = EvalSet(eval, model=model) if eval else None
    reselector, tmp = None, None
    if config.reselect_every:
        if reselector_for is None:
            raise KdataError("--reselect-every needs a pool to re-select from (kdata.pipeline.distill.train_student)")
        work = Path(out) / "reselect" if out else Path(tmp := tempfile.mkdtemp(prefix="kdata-reselect-"))
        if out:  # an earlier run's re-selections were made by another student: never reused
            shutil.rmtree(work, ignore_errors=True)
        reselector = reselector_for(model, work_dir=work, device=device)
    try:
        log = train(model, shards, config=config, eval_set=eval_set, reselector=reselector, progress=progress)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    log["verified"] = verified
    if out:
        log["out"] = str(out)
        log["files"] = save_student(model, out, log=log)
    return json.loads(json.dumps(log, default=str))
