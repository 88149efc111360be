"""HARD's differentiable augmentation and the conversions between pixels, model inputs and PNG bytes.

The image x (de-normalised to [0, 1], at the teacher's input size) becomes
``x' = clamp(noise(bright(contrast(blur(affine(x))))), 0, 1)``: a bilinear ``grid_sample`` with the
sampling matrix ``R(rot)·Shear(shear)/scale`` plus translation (border padding), a separable Gaussian
blur whose kernel weights are a differentiable function of σ, contrast ``(x − mean)·c + mean``,
brightness ``x + b`` and a fixed seeded noise pattern times the learned std. Every step is a torch
op, so gradients flow to the parameters.

Every model call of HARD goes through ``forward_blocks``: blocks of exactly ``MODEL_BLOCK`` rows, so
a row's logits (and the gradients through them) do not depend on how many rows came with it.
"""

from __future__ import annotations

import io
import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from kdata.augment.params import PARAM_NAMES
from kdata.models.images import decode_image
from kdata.models.spec import Model

_IDX = {n: i for i, n in enumerate(PARAM_NAMES)}
# Rows per model call in HARD. Matrix and convolution kernels round differently for other batch shapes,
# so a fixed shape keeps each row's numbers independent of the batch it came in (``--batch-size``).
# Part of the seeding scheme: changing it changes the outputs, so bump ``kdata.augment.params.SEEDING`` with it.
MODEL_BLOCK = 32


def forward_blocks(model: Model, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``model.forward(x)`` computed in blocks of exactly ``MODEL_BLOCK`` rows (the last one padded with
    zeros, whose outputs are dropped): (logits, features or None). Gradients flow to ``x``."""
    n = len(x)
    if n == 0:
        return model.forward(x)
    pad = -n % MODEL_BLOCK
    if pad:
        x = torch.cat([x, x.new_zeros((pad, *x.shape[1:]))])
    outs = [model.forward(x[a:a + MODEL_BLOCK]) for a in range(0, len(x), MODEL_BLOCK)]
    logits = torch.cat([z for z, _ in outs])[:n]
    feats = None if any(f is None for _, f in outs) else torch.cat([f for _, f in outs])[:n]
    return logits, feats


def _affine(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    r = torch.deg2rad(v[:, _IDX["rotation_deg"]])
    h = torch.deg2rad(v[:, _IDX["shear_deg"]])
    s = v[:, _IDX["scale"]]
    cos, sin, tan = torch.cos(r), torch.sin(r), torch.tan(h)
    # sampling matrix R(r) · [[1, tan h], [0, 1]] / s ; translation in normalised coords (2 × fraction)
    a = torch.stack([torch.stack([cos, cos * tan - sin], 1),
                     torch.stack([sin, sin * tan + cos], 1)], 1) / s[:, None, None]
    t = 2 * torch.stack([v[:, _IDX["translate_x"]], v[:, _IDX["translate_y"]]], 1)
    theta = torch.cat([a, t[:, :, None]], 2)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _blur(x: torch.Tensor, sigma: torch.Tensor, max_sigma: float) -> torch.Tensor:
    """Separable Gaussian blur with a per-sample σ (differentiable in σ; σ → 0 is the identity)."""
    n, c, h, w = x.shape
    rad = max(1, int(math.ceil(2 * max_sigma)))
    i = torch.arange(-rad, rad + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-(i[None] ** 2) / (2 * sigma[:, None] ** 2 + 1e-4))
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (n*c, 2r+1)
    xp = F.pad(x, (rad, rad, rad, rad), mode="replicate").reshape(1, n * c, h + 2 * rad, w + 2 * rad)
    y = F.conv2d(xp, k[:, None, None, :], groups=n * c)
    y = F.conv2d(y, k[:, None, :, None], groups=n * c)
    return y.reshape(n, c, h, w)


def render(x: torch.Tensor, values: torch.Tensor, noise: torch.Tensor, *, max_sigma: float) -> torch.Tensor:
    """Apply bounded parameter ``values`` (N, P) to pixel images ``x`` (N, C, H, W) in [0, 1]."""
    y = _affine(x, values)
    y = _blur(y, values[:, _IDX["blur_sigma"]], max_sigma)
    mu = y.mean(dim=(2, 3), keepdim=True)
    y = (y - mu) * values[:, _IDX["contrast"], None, None, None] + mu
    y = y + values[:, _IDX["brightness"], None, None, None]
    y = y + values[:, _IDX["noise_std"], None, None, None] * noise
    return y.clamp(0.0, 1.0)


def to_model(pix: torch.Tensor, model: Model) -> torch.Tensor:
    """Pixel images in [0, 1] → the model's input (channels, size, normalisation)."""
    c, h, w = model.input_size
    if pix.shape[1] != c:
        if c == 1:
            wts = torch.tensor([0.299, 0.587, 0.114], device=pix.device, dtype=pix.dtype)[:, None, None]
            pix = (pix * wts).sum(1, keepdim=True)
        else:
            pix = pix.expand(-1, c, -1, -1)
    if pix.shape[-2:] != (h, w):
        pix = F.interpolate(pix, size=(h, w), mode="bilinear", align_corners=False)
    mean = torch.tensor(model.mean, device=pix.device, dtype=pix.dtype)[:, None, None]
    std = torch.tensor(model.std, device=pix.device, dtype=pix.dtype)[:, None, None]
    return (pix - mean) / std


def to_pixels(x: torch.Tensor, model: Model) -> torch.Tensor:
    """A model input batch (normalised as ``model`` expects) → pixel images in [0, 1]."""
    mean = torch.tensor(model.mean, dtype=x.dtype)[:, None, None]
    std = torch.tensor(model.std, dtype=x.dtype)[:, None, None]
    return (x * std + mean).clamp(0, 1)


def png_bytes(pix: torch.Tensor) -> list[bytes]:
    """(N, C, H, W) in [0, 1] → PNG bytes per image (L for one channel, RGB for three)."""
    arr = (pix.detach().cpu().clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    out = []
    for a in arr:
        im = Image.fromarray(a[0], "L") if a.shape[0] == 1 else Image.fromarray(np.moveaxis(a, 0, -1), "RGB")
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def decode_batch(images: list[bytes], model: Model) -> torch.Tensor:
    """Decode image bytes exactly as scoring does (``kdata.models.images.decode_image``) into one batch."""
    return torch.stack([decode_image(b, input_size=model.input_size, mean=model.mean, std=model.std,
                                     interpolation=model.interpolation) for b in images])
