"""Distil a student from curated shards: the teacher's stored top-k soft labels are the targets.

No teacher forward runs during training. The loss (Hinton et al. 2015) is

    L = α · T² · KL(p_t^T ‖ p_s^T) + (1 − α) · CE(s, y_web)

where p^T is a softmax at temperature T and the CE term averages over rows with a web label
(``label_idx ≥ 0``; rows without one contribute only the KD term). ``loss="nkd"`` replaces the KD
term with Normalized KD (Yang et al., arXiv 2303.13005):

    NKD = −t_y · log s_y − γ · T² · Σ_{i≠y} N(t^T)_i · log N(s^T)_i

with y the web label (the teacher's top-1 when unknown), t_y the teacher's probability of y at
T = 1 (so a wrong web label, which the teacher gives little mass, barely pulls), and N(·) the
distribution renormalised over the non-target classes.

**Reconstructing the teacher's distribution from top-k.** A shard stores the teacher's top-k raw
logits z_1..z_k and probabilities p_1..p_k at the scoring temperature T_s (full-softmax
probabilities, so the rest of the mass is r = 1 − Σ p_i). We give the C − k missing classes one
shared logit z_r chosen so that, at T_s, they hold exactly r between them:
log Z = z_1/T_s − log p_1 and z_r = T_s · (log(r / (C − k)) + log Z). The target at the training
temperature T is then softmax([z_1..z_k, z_r, …, z_r] / T). At T = T_s this reproduces the stored
probabilities exactly with the remainder spread uniformly; at other T it re-tempers the same
logits; with k = C it is the teacher's full distribution. (Renormalising over the top-k instead
would throw away the teacher's "everything else" mass and make the target over-confident.)
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from kdata.core.atomic import write_json
from kdata.core.errors import KdataError
from kdata.models.spec import Model, load_model, pick_device
from kdata.models.images import decode_image, worker_context
from kdata.scoring.score import label_indices
from kdata.training.shard_dataset import ShardDataset, verify_source


@dataclass
class TrainConfig:
    """Hyper-parameters of a distillation run (defaults tuned by ``benchmarks/quality.py``)."""

    epochs: int = 12
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    temperature: float = 1.0
    alpha: float = 0.9
    loss: str = "kd"  # "kd" | "nkd"
    nkd_gamma: float = 1.5
    seed: int = 0
    reinit: bool = False
    workers: int | str = "auto"
    device: str = "auto"
    reselect_every: int = 0
    eval_every_epoch: bool = True
    augment: bool = True  # light random affine jitter of each batch (labels stay valid)


# ------------------------------------------------------------------------------------------------
# Targets and losses

def soft_targets(topk_idx: torch.Tensor, topk_logit: torch.Tensor, topk_prob: torch.Tensor, *, num_classes: int,
                 temperature: float, score_temperature: float = 1.0) -> torch.Tensor:
    """The teacher's full distribution at ``temperature`` rebuilt from stored top-k (see module doc)."""
    idx = topk_idx.long()
    z = topk_logit.float()
    p = topk_prob.float().clamp_min(1e-12)
    k = idx.shape[1]
    full = torch.empty(idx.shape[0], num_classes, dtype=torch.float32, device=z.device)
    if k < num_classes:
        rest = (1.0 - p.sum(1)).clamp_min(1e-12)
        log_z = z[:, 0] / score_temperature - p[:, 0].log()
        z_rest = score_temperature * (torch.log(rest / (num_classes - k)) + log_z)
        full[:] = z_rest[:, None]
    full.scatter_(1, idx, z)
    return torch.softmax(full / temperature, dim=1)


def kd_loss(student_logits: torch.Tensor, target: torch.Tensor, labels: torch.Tensor, *, temperature: float,
            alpha: float) -> torch.Tensor:
    """α·T²·KL(target ‖ softmax(s/T)) (batch mean) + (1−α)·CE(s, labels) over rows with labels ≥ 0."""
    log_ps = torch.log_softmax(student_logits.float() / temperature, dim=1)
    kl = (target * (target.clamp_min(1e-12).log() - log_ps)).sum(1).mean()
    return alpha * temperature ** 2 * kl + (1 - alpha) * _ce(student_logits, labels)


def nkd_loss(student_logits: torch.Tensor, target_t1: torch.Tensor, target: torch.Tensor, labels: torch.Tensor, *,
             temperature: float, alpha: float, gamma: float = 1.5) -> torch.Tensor:
    """α·NKD + (1−α)·CE: ``target_t1`` is the teacher at T = 1, ``target`` at ``temperature``."""
    s = student_logits.float()
    y = torch.where(labels >= 0, labels, target_t1.argmax(1)).long()[:, None]
    log_s1 = torch.log_softmax(s, dim=1)
    t_y = target_t1.gather(1, y)[:, 0]
    target_term = -(t_y * log_s1.gather(1, y)[:, 0]).mean()
    mask = torch.ones_like(s, dtype=torch.bool).scatter_(1, y, False)
    # non-target distributions at T, renormalised over the non-target classes
    log_sn = torch.log_softmax((s / temperature).masked_fill(~mask, float("-inf")), dim=1)
    tn = target.masked_fill(~mask, 0.0)
    tn = tn / tn.sum(1, keepdim=True).clamp_min(1e-12)
    non_target = -(tn * log_sn.masked_fill(~mask, 0.0)).sum(1).mean()
    nkd = target_term + gamma * temperature ** 2 * non_target
    return alpha * nkd + (1 - alpha) * _ce(student_logits, labels)


def _ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    have = labels >= 0
    if not bool(have.any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits.float()[have], labels[have].long())


# ------------------------------------------------------------------------------------------------
# Evaluation

class EvalSet:
    """Labelled images to measure accuracy on: ``builtin:digits-test``, an image folder or a Parquet pool.

    Decoded once (with the student's preprocessing) and kept as tensors, so per-epoch evaluation
    costs only a forward pass.
    """

    def __init__(self, spec: str, *, model: Model, max_rows: int = 200_000):
        from kdata.pools.spec import open_pool

        pool = open_pool(spec)
        xs, ys, n_unlabelled = [], [], 0
        for unit in pool.units:
            t = unit.read()
            if t.num_rows == 0:
                continue
            if t.column("image").null_count == t.num_rows:
                raise KdataError(f"{spec}: evaluation set has no images")
            labels = label_indices(t.column("label"), model.class_names)
            n_unlabelled += int((labels < 0).sum())
            for data, y in zip(t.column("image").to_pylist(), labels):
                if y < 0:
                    continue
                try:
                    xs.append(decode_image(data, input_size=model.input_size, mean=model.mean, std=model.std,
                                           interpolation=model.interpolation))
                except Exception:
                    continue
                ys.append(int(y))
                if len(ys) > max_rows:
                    raise KdataError(f"{spec}: evaluation set larger than {max_rows} labelled images")
        if not ys:
            raise KdataError(f"{spec}: evaluation set has no labelled images whose labels are among the "
                             f"student's class names")
        self.spec = spec
        self.x = torch.stack(xs)
        self.y = torch.tensor(ys, dtype=torch.long)
        self.n_unlabelled = n_unlabelled

    def __len__(self) -> int:
        return len(self.y)

    def accuracy(self, model: Model, *, device=None, batch_size: int = 512) -> float:
        device = device or next(iter(model.module.parameters()), torch.empty(0)).device
        was = model.module.training
        model.module.eval()
        correct = 0
        with torch.inference_mode(), _autocast(torch.device(device)):
            for i in range(0, len(self.y), batch_size):
                logits, _ = model.forward(self.x[i:i + batch_size].to(device))
                correct += int((logits.float().argmax(1).cpu() == self.y[i:i + batch_size]).sum())
        model.module.train(was)
        return correct / len(self.y)


# ------------------------------------------------------------------------------------------------
# Training

def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


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
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


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


def reinit_(module: torch.nn.Module) -> None:
    """Reset every layer's parameters (``--reinit``: train from scratch)."""
    for m in module.modules():
        if m is not module and hasattr(m, "reset_parameters"):
            m.reset_parameters()


class _Bar:
    """A one-line progress bar on stderr; silent when quiet or stderr is not a terminal."""

    def __init__(self, quiet: bool):
        self.on = not quiet and sys.stderr.isatty()

    def update(self, epoch: int, epochs: int, done: int, total: int, loss: float) -> None:
        if not self.on:
            return
        w = 24
        fill = int(w * done / max(total, 1))
        sys.stderr.write(f"\r  epoch {epoch}/{epochs} [{'#' * fill}{'.' * (w - fill)}] {done}/{total} rows  "
                         f"loss {loss:.4f}")
        sys.stderr.flush()

    def end(self, msg: str) -> None:
        if self.on:
            sys.stderr.write(f"\r{msg:<78}\n")
            sys.stderr.flush()


def train(student: Model, shards, *, config: TrainConfig = TrainConfig(), eval_set: EvalSet | None = None,
          reselector=None, quiet: bool = True) -> dict:
    """Distil ``student`` (trained in place) on the curated shards at ``shards``. Returns the training log."""
    device = pick_device(config.device)
    with _threads_for(student.module, device):
        return _train(student, shards, config=config, eval_set=eval_set, reselector=reselector, quiet=quiet)


def _train(student: Model, shards, *, config: TrainConfig, eval_set: EvalSet | None, reselector,
           quiet: bool) -> dict:
    if config.loss not in ("kd", "nkd"):
        raise KdataError(f"--loss {config.loss}: expected kd or nkd")
    if not 0.0 <= config.alpha <= 1.0:
        raise KdataError(f"--alpha {config.alpha}: must be within [0, 1]")
    if not config.temperature > 0:
        raise KdataError(f"--temperature {config.temperature}: must be positive")
    if config.epochs < 1 or config.batch_size < 1:
        raise KdataError("--epochs and --batch-size must be at least 1")
    t0 = time.perf_counter()
    device = pick_device(config.device)
    torch.manual_seed(config.seed)
    ds = ShardDataset(shards, input_size=student.input_size, mean=student.mean, std=student.std,
                      interpolation=student.interpolation, shuffle=True, seed=config.seed)
    if len(ds) == 0:
        raise KdataError(f"{shards}: the curated shards hold no rows")
    names = ds.class_names
    if names is not None and list(names) != list(student.class_names):
        raise KdataError(f"{shards}: shards were labelled with {len(names)} classes "
                         f"({', '.join(map(str, names[:4]))}…) that differ from the student's")
    net = student.module.to(device)
    params = [p for p in net.parameters() if p.is_floating_point()]
    if not params:
        raise KdataError(f"{student.spec}: the student has no trainable parameters")
    for p in params:
        p.requires_grad_(True)
    if config.reinit:
        reinit_(net)
    acc_before = eval_set.accuracy(student, device=device) if eval_set is not None else None
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(len(ds) / config.batch_size)
    total = max(1, steps_per_epoch * config.epochs)
    warm = max(1, total // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    C = student.num_classes
    gen = torch.Generator(device=device).manual_seed(config.seed)
    bar = _Bar(quiet)
    epochs_log, reselections = [], []
    pin = device.type == "cuda"
    for epoch in range(config.epochs):
        if reselector is not None and config.reselect_every and epoch > 0 and epoch % config.reselect_every == 0:
            path, info = reselector(student, epoch=epoch, budget=len(ds))
            reselections.append({"epoch": epoch, **info})
            ds = ShardDataset(path, input_size=student.input_size, mean=student.mean, std=student.std,
                              interpolation=student.interpolation, shuffle=True, seed=config.seed)
        ds.set_epoch(epoch)
        workers = _workers(config.workers, len(ds))
        loader = DataLoader(ds, batch_size=config.batch_size, num_workers=workers, pin_memory=pin,
                            prefetch_factor=4 if workers else None, multiprocessing_context=worker_context(workers))
        net.train()
        seen, loss_sum = 0, 0.0
        for x, idx, logit, prob, y in loader:
            if len(y) < 2 and _has_bn1d(net):
                continue
            x, idx, logit, prob, y = (t.to(device, non_blocking=pin) for t in (x, idx, logit, prob, y))
            if config.augment:
                x = jitter(x, gen)
            with _autocast(device):
                s_logits, _ = student.forward(x)
            s_logits = s_logits.float()
            target = soft_targets(idx, logit, prob, num_classes=C, temperature=config.temperature,
                                  score_temperature=ds.temperature)
            if config.loss == "kd":
                loss = kd_loss(s_logits, target, y, temperature=config.temperature, alpha=config.alpha)
            else:
                t1 = soft_targets(idx, logit, prob, num_classes=C, temperature=1.0, score_temperature=ds.temperature)
                loss = nkd_loss(s_logits, t1, target, y, temperature=config.temperature, alpha=config.alpha,
                                gamma=config.nkd_gamma)
            if not torch.isfinite(loss):
                raise KdataError(f"training diverged at epoch {epoch + 1} (loss {loss.item()}); lower --lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            seen += len(y)
            loss_sum += float(loss.detach()) * len(y)
            bar.update(epoch + 1, config.epochs, seen, len(ds), loss_sum / seen)
        entry = {"epoch": epoch + 1, "rows": seen, "loss": loss_sum / max(seen, 1)}
        if eval_set is not None and (config.eval_every_epoch or epoch == config.epochs - 1):
            entry["accuracy"] = eval_set.accuracy(student, device=device)
        epochs_log.append(entry)
        acc = f"  acc {entry['accuracy']:.4f}" if "accuracy" in entry else ""
        bar.end(f"  epoch {epoch + 1}/{config.epochs}  loss {entry['loss']:.4f}{acc}")
    net.eval()
    return {
        "accuracy": epochs_log[-1].get("accuracy"),
        "accuracy_before": acc_before,
        "n_train": len(ds),
        "epochs": config.epochs,
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
    """Write ``OUT/student.pt2`` (+ sidecar ``student.json``) and ``OUT/train_log.json``."""
    from kdata.models.files import export_model

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    net = student.module
    device = next(iter(net.parameters()), torch.empty(0)).device
    net.to("cpu").eval()
    path = export_model(net, out / "student.pt2", input_size=student.input_size, mean=student.mean,
                        std=student.std, class_names=student.class_names, kind="pt2")
    net.to(device)
    files = {"student": str(path), "sidecar": str(Path(path).with_suffix(".json")),
             "log": str(out / "train_log.json")}
    write_json(out / "train_log.json", {**log, "files": files})
    return files


def run_train(*, shards, student: str, eval: str | None, config: TrainConfig, out: str | None = None,
              quiet: bool = True, reselector_for=None, verify: bool = True) -> dict:
    """Load the student, train on ``shards`` (first checked against its manifest unless ``verify=False``),
    evaluate on ``eval``, save to ``out``. Returns the log.

    ``reselector_for(model, *, work_dir, device)`` builds the re-selector of ``--reselect-every``
    (``kdata.pipeline.distill``, which writes each re-selection through the curation core).
    """
    verified = verify_source(shards) if verify else False
    device = pick_device(config.device)
    model = load_model(student, device=device)
    eval_set = EvalSet(eval, model=model) if eval else None
    reselector, tmp = None, None
    if config.reselect_every:
        if reselector_for is None:
            raise KdataError("--reselect-every needs a pool to re-select from (kdata.pipeline.distill.train_student)")
        work = Path(out) / "reselect" if out else Path(tmp := tempfile.mkdtemp(prefix="kdata-reselect-"))
        reselector = reselector_for(model, work_dir=work, device=device)
    try:
        log = train(model, shards, config=config, eval_set=eval_set, reselector=reselector, quiet=quiet)
    finally:
        if tmp:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    log["verified"] = verified
    if out:
        log["files"] = save_student(model, out, log=log)
    return json.loads(json.dumps(log, default=str))
