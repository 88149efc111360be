"""Training-time augmentation of a decoded batch: a small random affine jitter on the device, drawn
from the run's seeded generator (``kdata train --augment``)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def jitter(x: torch.Tensor, gen: torch.Generator, *, degrees: float = 10.0, scale: float = 0.08,
           shift: float = 0.08) -> torch.Tensor:
    """Batched small random affine jitter (rotation ±degrees, scale ±scale, shift ±shift of the size); one draw
    per image from ``gen``, so a seeded generator gives the same batch."""
    n = x.shape[0]

    def u(lim):
        return (torch.rand(n, generator=gen, device=x.device) * 2 - 1) * lim

    ang = u(math.radians(degrees))
    sc = 1 + u(scale)
    cos, sin = torch.cos(ang) / sc, torch.sin(ang) / sc
    theta = torch.stack([torch.stack([cos, -sin, u(2 * shift)], 1), torch.stack([sin, cos, u(2 * shift)], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, align_corners=False, padding_mode="border")
