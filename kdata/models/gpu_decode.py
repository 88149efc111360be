"""Batched JPEG decode and preprocessing on the GPU (nvJPEG through torchvision), CPU fallback per image.

``decode_jpegs`` decodes a list of JPEG byte tensors in one ``torchvision.io.decode_jpeg(list,
device=…)`` call; that call returns nothing when one image fails, so a failed batch is retried
image by image and only the images that still fail are left to the CPU decoder (and, failing
there too, quarantined as without a GPU).

``preprocess`` turns the decoded uint8 images into each model's input on the same device,
following the CPU path (``kdata.models.images.decode_multi_u8``) step by step so that both give
close pixels: the reduced-scale JPEG decode the CPU path gets from ``Image.draft`` is emulated by
a box reduction by the same power of two (what the scaled inverse DCT approximates), RGB → grey
uses Pillow's integer weights, and the resize is the antialiased bilinear/bicubic filter Pillow
uses (``F.interpolate(antialias=True)``, Keys a = −0.5 for bicubic), rounded to whole pixel levels
before normalising. Measured against the CPU path on 80 JPEG crops (CPU device, where torchvision
decodes with libjpeg like Pillow): mean |difference| 0.54 of 255 where the draft scale applies
(2.8 without its emulation), about 0.1 where it does not. Interpolations Pillow has and torch
lacks (lanczos, box) keep JPEGs on the CPU path.
"""

from __future__ import annotations

import functools
import warnings

import numpy as np
import torch
import torch.nn.functional as F

GPU_INTERPOLATIONS = {"bilinear": "bilinear", "bicubic": "bicubic", "nearest": "nearest-exact"}


def gpu_decodable(keys: list[tuple]) -> bool:
    """Whether every preprocessing key can be reproduced on the GPU (its interpolation exists in torch)."""
    return all(k[3] in GPU_INTERPOLATIONS for k in keys)


def decode_jpegs(jpegs: list[torch.Tensor], *, device: torch.device, gray: bool) -> list[torch.Tensor | None]:
    """Raw JPEG bytes (uint8 CPU tensors) → uint8 (C, H, W) images on ``device``; None where one fails.

    ``gray``: decode the luma plane only (all models take one channel), else RGB."""
    from torchvision.io import ImageReadMode, decode_jpeg

    if not jpegs:
        return []
    mode = ImageReadMode.GRAY if gray else ImageReadMode.RGB

    def decode() -> list[torch.Tensor | None]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torchvision 0.29 marks its decoders deprecated (TorchCodec)
            try:
                return list(decode_jpeg(jpegs, mode=mode, device=device))
            except RuntimeError:  # one bad image fails the whole call: retry one by one
                out = []
                for j in jpegs:
                    try:
                        out.append(decode_jpeg([j], mode=mode, device=device)[0])
                    except RuntimeError:
                        out.append(None)
                return out

    if device.type != "cuda":
        return decode()
    # nvJPEG writes its outputs from its own stream as soon as they are allocated: allocating them
    # on the compute stream could hand it memory that kernels still queued there are using. On a
    # side stream they come from that stream's own pool; the compute stream then waits for the
    # decode, and each image is marked as used there so its memory is not reused too early.
    compute, side = torch.cuda.current_stream(device), decode_stream(device)
    with torch.cuda.stream(side):
        images = decode()
    compute.wait_stream(side)
    for im in images:
        if im is not None:
            im.record_stream(compute)
    return images


@functools.lru_cache(maxsize=8)
def decode_stream(device: torch.device):
    """The side CUDA stream JPEGs are decoded on (one per device)."""
    return torch.cuda.Stream(device=device)


def draft_scale(height: int, width: int, keys: list[tuple]) -> int:
    """The power of two Pillow's ``draft`` reduces a JPEG by for the largest target of ``keys``."""
    scale = min(width // max(k[0][2] for k in keys), height // max(k[0][1] for k in keys))
    return next((s for s in (8, 4, 2) if scale >= s), 1)


def to_channels(x: torch.Tensor, c: int) -> torch.Tensor:
    """uint8 (N, C0, H, W) → C channels: grey → RGB by repetition, RGB → grey with Pillow's weights
    (``L = (19595 R + 38470 G + 7471 B + 2^15) >> 16``)."""
    if x.shape[1] == c:
        return x
    if c == 3:
        return x.expand(-1, 3, -1, -1)
    w = x.to(torch.int32)
    return ((w[:, 0] * 19595 + w[:, 1] * 38470 + w[:, 2] * 7471 + 0x8000) >> 16).to(torch.uint8)[:, None]


def preprocess(images: list[torch.Tensor], keys: list[tuple]) -> dict[tuple, torch.Tensor]:
    """Decoded uint8 images (C0, H, W), all on one device → {key: float32 (N, C, H, W)} normalised.

    Images of one size are processed together (one kernel per step per size, not per image)."""
    from kdata.models.images import normalise, to_device

    if not images:
        return {k: torch.empty((0, *k[0]), dtype=torch.float32) for k in keys}
    groups: dict[tuple, list[int]] = {}
    for i, im in enumerate(images):
        groups.setdefault(tuple(im.shape), []).append(i)
    parts: dict[tuple, list[torch.Tensor]] = {k: [] for k in keys}
    for (_, height, width), idx in groups.items():
        x = torch.stack([images[i] for i in idx])
        scale = draft_scale(height, width, keys)
        if scale > 1:  # Image.draft's reduced-scale decode ≈ a box reduction, rounded to pixel levels
            x = F.avg_pool2d(x.float(), scale, scale, ceil_mode=True).round_().to(torch.uint8)
        for key in keys:
            (c, h, w), mean, std, interpolation = key
            y = to_channels(x, c)
            if tuple(y.shape[-2:]) != (h, w):
                mode = GPU_INTERPOLATIONS[interpolation]
                aa = {"antialias": True, "align_corners": False} if mode != "nearest-exact" else {}
                y = F.interpolate(y.float(), size=(h, w), mode=mode, **aa).round_().clamp_(0, 255)
            parts[key].append(normalise(y, mean, std))
    order = [i for idx in groups.values() for i in idx]  # the images' positions, group after group
    if len(groups) == 1:
        return {k: v[0] for k, v in parts.items()}
    back = to_device(torch.from_numpy(np.argsort(np.asarray(order), kind="stable")), images[0].device)
    return {k: torch.cat(v)[back] for k, v in parts.items()}
