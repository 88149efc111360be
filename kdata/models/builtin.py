"""Built-in models ``builtin:digits-teacher`` and ``builtin:digits-student``.

Trained on first use on the clean ``train`` split of scikit-learn's digits (disjoint from the
pool and the test split), cached under ``$KDATA_CACHE/models`` and reused. The teacher is a small
CNN (~94k parameters, ~97% test accuracy); the student a much smaller one (~3.8k parameters,
~83%) that has seen only 150
clean images, so there is something to distil.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from kdata.pools import builtin
from kdata.core.atomic import atomic_path, sha256_file, write_json
from kdata.core.errors import KdataError
from kdata.models.base import Model, register_loader
from kdata.models.safe_load import load_state_file
from kdata.models.sidecar import first_line
from kdata.core.paths import cache_dir

MODEL_VERSION = "v1"
INPUT_SIZE = (1, builtin.SIZE, builtin.SIZE)
MEAN, STD = (0.5,), (0.5,)


class DigitsNet(nn.Module):
    """A plain CNN: conv blocks → global average pool → linear head. ``features`` is penultimate."""

    def __init__(self, widths: tuple[int, ...] = (32, 64, 128), num_classes: int = 10, in_ch: int = 1):
        super().__init__()
        self.widths = tuple(widths)
        layers: list[nn.Module] = []
        c = in_ch
        for i, w in enumerate(widths):
            layers += [nn.Conv2d(c, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
            if i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
            c = w
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(c, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


SPECS = {
    "digits-teacher": {"widths": (32, 64, 128), "split": "train", "epochs": 20, "seed": 1},
    "digits-student": {"widths": (8, 16, 16), "split": "student", "epochs": 100, "seed": 2},
}


def _normalise(x_uint8: torch.Tensor) -> torch.Tensor:
    return (x_uint8.float() / 255.0 - MEAN[0]) / STD[0]


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Small random affine jitter, batched (keeps the teacher a little robust)."""
    n = x.shape[0]
    ang = (torch.rand(n, generator=gen) - 0.5) * 2 * 0.26  # ±15°
    scale = 1 + (torch.rand(n, generator=gen) - 0.5) * 0.2
    tx, ty = [(torch.rand(n, generator=gen) - 0.5) * 0.2 for _ in range(2)]
    cos, sin = torch.cos(ang) / scale, torch.sin(ang) / scale
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, align_corners=False, padding_mode="border")


def train_builtin(name: str) -> DigitsNet:
    cfg = SPECS[name]
    torch.manual_seed(cfg["seed"])
    gen = torch.Generator().manual_seed(cfg["seed"])
    arrs, ys = builtin.split_arrays(cfg["split"])
    x = _normalise(torch.from_numpy(arrs).unsqueeze(1))
    y = torch.from_numpy(ys)
    net = DigitsNet(cfg["widths"])
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)
    steps_per_epoch = max(1, len(y) // 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=5e-3, total_steps=cfg["epochs"] * steps_per_epoch)
    net.train()
    for _ in range(cfg["epochs"]):
        perm = torch.randperm(len(y), generator=gen)
        for s in range(steps_per_epoch):
            idx = perm[s * 64:(s + 1) * 64]
            loss = F.cross_entropy(net(_augment(x[idx], gen)), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    net.eval()
    return net


def sidecar(name: str) -> dict:
    return {"input_size": list(INPUT_SIZE), "mean": list(MEAN), "std": list(STD),
            "interpolation": "bilinear", "class_names": builtin.CLASS_NAMES,
            "arch": {"widths": list(SPECS[name]["widths"])}}


def builtin_checkpoint(name: str) -> str:
    """Path of the cached state dict of a built-in model, training it on first use."""
    path = cache_dir("models") / f"{name}-{MODEL_VERSION}.pt"
    if not path.exists():
        t0 = time.perf_counter()
        net = train_builtin(name)
        with atomic_path(path) as tmp:
            torch.save(net.state_dict(), tmp)
        write_json(path.with_suffix(".json"), {**sidecar(name), "trained_seconds": time.perf_counter() - t0})
    return str(path)


def load_digits_net(path: str, widths, *, device) -> DigitsNet:
    """A cached DigitsNet state dict, loaded like any user file (inspected, weights only)."""
    state = load_state_file(path)
    try:
        net = DigitsNet(tuple(widths))
        net.load_state_dict(state)
    except Exception as exc:  # corrupt or foreign cache file: one line, not a traceback
        raise KdataError(f"{path}: cannot load checkpoint ({first_line(exc)})", exit_code=2) from None
    return net.to(device).eval()


def model_from_net(net: DigitsNet, *, spec: str, checksum: str, class_names=None) -> Model:
    def fwd(x):
        f = net.features(x)
        return net.head(f), f

    return Model(spec=spec, module=net, input_size=INPUT_SIZE, mean=MEAN, std=STD,
                 class_names=list(class_names or builtin.CLASS_NAMES), checksum=checksum, forward_fn=fwd)


@register_loader(lambda s: s.startswith("builtin:"))
def _load_builtin(spec: str, *, device="cpu") -> Model:
    name = spec.split(":", 1)[1]
    if name not in SPECS:
        raise KdataError(f"unknown built-in model '{spec}' (builtin:digits-teacher, builtin:digits-student)")
    path = builtin_checkpoint(name)
    net = load_digits_net(path, SPECS[name]["widths"], device=device)
    return model_from_net(net, spec=spec, checksum="sha256:" + sha256_file(path))


def accuracy(model: Model, images_uint8: np.ndarray, labels: np.ndarray) -> float:
    with torch.inference_mode():
        x = _normalise(torch.from_numpy(images_uint8).unsqueeze(1))
        logits, _ = model.forward(x)
    return float((logits.argmax(1).numpy() == labels).mean())


if __name__ == "__main__":  # python -m kdata.builtin_models: train both and print accuracies
    arrs, ys = builtin.split_arrays("test")
    for n in SPECS:
        m = _load_builtin(f"builtin:{n}")
        print(n, f"test accuracy {accuracy(m, arrs, ys):.3f}", json.dumps(m.describe()), os.getpid())
