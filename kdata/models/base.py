"""A loaded model with its preprocessing config, the loader registry and the device choice."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from kdata.core.device_names import check_device_name
from kdata.core.errors import KdataError

@dataclass
class Model:
    """A model kdata can score with: the module, the preprocessing its inputs need (size, mean, std,
    interpolation), its class names in logit order and a checksum of its weights (the score cache key)."""

    spec: str
    module: torch.nn.Module
    input_size: tuple[int, int, int]  # C, H, W
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: list[str]
    checksum: str
    interpolation: str = "bilinear"
    # x -> (logits, features or None). Defaults to module(x) with no features.
    forward_fn: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]] | None = None
    differentiable: bool = True
    extra: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.forward_fn is not None:
            return self.forward_fn(x)
        return self.module(x), None

    @property
    def preprocess_key(self) -> tuple:
        return (self.input_size, self.mean, self.std, self.interpolation)

    def describe(self) -> dict:
        return {"spec": self.spec, "checksum": self.checksum, "num_classes": self.num_classes,
                "input_size": list(self.input_size), "mean": list(self.mean), "std": list(self.std),
                "interpolation": self.interpolation}


_LOADERS: list[tuple[Callable[[str], bool], Callable[..., Model]]] = []


def register_loader(claims: Callable[[str], bool]):
    """Decorator: ``fn(spec, *, device) -> Model`` loads specs for which ``claims(spec)``."""

    def deco(fn):
        _LOADERS.append((claims, fn))
        return fn

    return deco


def loaders() -> list[tuple[Callable[[str], bool], Callable[..., Model]]]:
    """The registered ``(claims, load)`` pairs, in registration order."""
    return list(_LOADERS)


def pick_device(device: str = "auto") -> torch.device:
    """``auto`` → CUDA when present, else CPU. ``cuda`` and ``cuda:N`` need a CUDA device (N below
    the device count); anything else is one line naming the accepted forms. Checked here, where the
    device is chosen, so no command reaches torch's "Found no NVIDIA driver" traceback."""
    device = check_device_name(device)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        return torch.device("cpu")
    _, colon, index = device.partition(":")
    if not torch.cuda.is_available():
        raise KdataError(f"--device {device} requested but no CUDA device is available")
    if not colon:
        return torch.device("cuda")
    count = torch.cuda.device_count()
    if int(index) >= count:
        raise KdataError(f"--device {device}: this machine has {count} CUDA device(s) "
                         f"(cuda:0{f'..cuda:{count - 1}' if count > 1 else ''})")
    return torch.device("cuda", int(index))
