"""HARD's augmentation (``kdata.augment.transforms``): rendering parameter values, PNG encoding."""

from __future__ import annotations

import torch

from kdata.augment.params import PARAM_NAMES
from kdata.augment.transforms import png_bytes, render


def test_identity_values_render_the_image_unchanged_and_png_round_trips():
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    ident = torch.tensor([[1.0 if n in ("scale", "contrast") else 0.0 for n in PARAM_NAMES]] * 3)
    y = render(x, ident, torch.randn(x.shape, generator=torch.Generator().manual_seed(1)), max_sigma=1.0)
    assert torch.allclose(y, x, atol=1e-4)
    moved = ident.clone()
    moved[:, PARAM_NAMES.index("rotation_deg")] = 15.0
    assert (render(x, moved, torch.zeros_like(x), max_sigma=1.0) - x).abs().max() > 0.05
    png = png_bytes(x)
    assert len(png) == 3 and all(b.startswith(b"\x89PNG") for b in png)
