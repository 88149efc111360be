"""What every loader shares once a module is in memory: the probe forward pass, the
(logits, features) convention, the model checksum and the wrappers around loaded programs.

Every loader runs one probe forward pass on a batch of two before any scoring starts, so a wrong
sidecar, a static batch dimension or a class-count mismatch is one clear line and exit 2, not a
traceback mid-run.
"""

from __future__ import annotations

import contextlib
import hashlib
from typing import Callable

import torch
from torch import nn

from kdata.core.errors import KdataError
from kdata.models.sidecar import first_line


def split_outputs(out) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A model's output → (logits, features or None): tuple/list, dict or a bare tensor."""
    if isinstance(out, (tuple, list)):
        return out[0], (out[1] if len(out) > 1 else None)
    if isinstance(out, dict):
        return out["logits"], out.get("features")
    return out, None


def probe_outputs(fwd: Callable, input_size, device, *, where: str) -> tuple[int, int | None]:
    """One forward pass on a batch of two zeros → (classes, feature dim or None)."""
    x = torch.zeros((2, *input_size), device=device)
    try:
        with torch.inference_mode():
            logits, feats = fwd(x)
    except Exception as exc:
        raise KdataError(f"{where}: forward pass on a batch of shape {tuple(x.shape)} failed "
                         f"({first_line(exc)}); check input_size and that the batch dimension is dynamic"
                         ) from None
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or logits.shape[0] != 2:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise KdataError(f"{where}: expected logits of shape (batch, classes), got {shape}")
    fdim = None
    if feats is not None:
        if not isinstance(feats, torch.Tensor) or feats.ndim != 2 or feats.shape[0] != 2:
            shape = tuple(feats.shape) if isinstance(feats, torch.Tensor) else type(feats).__name__
            raise KdataError(f"{where}: expected features of shape (batch, dim), got {shape}")
        fdim = int(feats.shape[1])
    return int(logits.shape[1]), fdim


def model_checksum(*parts: bytes | str) -> str:
    """``sha256:`` over the parts (file digests, sidecar bytes, class names), NUL-separated."""
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else p.encode())
        h.update(b"\0")
    return "sha256:" + h.hexdigest()


class FrozenProgram(nn.Module):
    """Holds an exported/scripted program; ``eval()`` does not recurse (exported graphs refuse it)."""

    def __init__(self, program):
        super().__init__()
        self.program = program

    def train(self, mode: bool = True):
        self.training = mode
        return self

    def forward(self, x):
        return self.program(x)


def channels_last(module: nn.Module, device: torch.device) -> None:
    """Channels-last memory format on CUDA (faster convolutions); a no-op elsewhere."""
    if device.type == "cuda":
        with contextlib.suppress(Exception):
            module.to(memory_format=torch.channels_last)


class LogitsAndFeatures(nn.Module):
    """Wraps a classifier so it returns (logits, penultimate features)."""

    def __init__(self, net: nn.Module, mode: str):
        super().__init__()
        self.net, self.mode = net, mode

    def forward(self, x):
        if self.mode == "timm":
            pre = self.net.forward_features(x)
            feats = self.net.forward_head(pre, pre_logits=True)
            return self.net.forward_head(pre), feats
        feats = self.net.features(x)
        return self.net.head(feats), feats


def feature_mode(module: nn.Module) -> str | None:
    """``"features_head"`` (DigitsNet-style), ``"timm"`` (forward_features/forward_head) or None."""
    if callable(getattr(module, "features", None)) and isinstance(getattr(module, "head", None), nn.Module):
        return "features_head"
    if callable(getattr(module, "forward_features", None)) and callable(getattr(module, "forward_head", None)):
        return "timm"
    return None
