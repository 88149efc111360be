"""The built-in digits models' network and training recipe (``kdata.models.builtin`` loads them).

Training is seeded and runs on one intra-op thread (``THREADS``): the thread count changes how
float sums are split, and so the weights (the teacher scored 0.973 or 0.9775 depending on the
machine's thread count before this was fixed). The same torch build on the same CPU family then
reproduces the weights byte for byte; another build or CPU may differ in the last bits, which is
why the package ships the weights instead of training them on each machine.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from kdata.core.atomic import write_bytes
from kdata.pools import builtin

MODEL_VERSION = "v1"
INPUT_SIZE = (1, builtin.SIZE, builtin.SIZE)
MEAN, STD = (0.5,), (0.5,)
THREADS = 1
BATCH = 64
SPECS = {
    "digits-teacher": {"widths": (32, 64, 128), "split": "train", "epochs": 20, "seed": 1},
    "digits-student": {"widths": (8, 16, 16), "split": "student", "epochs": 100, "seed": 2},
}


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


def normalise(x_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 images → the models' input range (``(x/255 - MEAN) / STD``)."""
    return (x_uint8.float() / 255.0 - MEAN[0]) / STD[0]


@contextmanager
def fixed_threads(n: int = THREADS):
    """Run the body with ``n`` intra-op threads (restored afterwards)."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
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
    """Train one built-in model from scratch with its recorded seed and epochs (one thread)."""
    cfg = SPECS[name]
    with fixed_threads():
        torch.manual_seed(cfg["seed"])
        gen = torch.Generator().manual_seed(cfg["seed"])
        arrs, ys = builtin.split_arrays(cfg["split"])
        x = normalise(torch.from_numpy(arrs).unsqueeze(1))
        y = torch.from_numpy(ys)
        net = DigitsNet(cfg["widths"])
        opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)
        steps = max(1, len(y) // BATCH)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=5e-3, total_steps=cfg["epochs"] * steps)
        net.train()
        for _ in range(cfg["epochs"]):
            perm = torch.randperm(len(y), generator=gen)
            for s in range(steps):
                idx = perm[s * BATCH:(s + 1) * BATCH]
                loss = F.cross_entropy(net(augment(x[idx], gen)), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
    return net.eval()


def save_weights(net: DigitsNet, path: str | Path, *, name: str) -> None:
    """The state dict as safetensors, written atomically; the same tensors give the same bytes."""
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    # one metadata key: safetensors writes its metadata map in hash order, so several keys would
    # make the bytes (and the sha256) differ between two writes of the same tensors
    meta = {"kdata": f"{name} {MODEL_VERSION} widths={','.join(map(str, SPECS[name]['widths']))}"}
    write_bytes(path, save(state, metadata=meta))
