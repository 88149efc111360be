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
uses (what ``F.interpolate(antialias=True)`` computes, Keys a = −0.5 for bicubic; applied as
batched products with per-image weight matrices, so images of every size go through together),
rounded to whole pixel levels before normalising. Measured against the CPU path on 80 JPEG crops (CPU device, where torchvision
decodes with libjpeg like Pillow): mean |difference| 0.54 of 255 where the draft scale applies
(2.8 without its emulation), about 0.1 where it does not. Interpolations Pillow has and torch
lacks (lanczos, box) keep JPEGs on the CPU path.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import warnings

import numpy as np
import torch

from kdata.models.images import normalise, to_device

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


def draft_scales(dims: np.ndarray, keys: list[tuple]) -> np.ndarray:
    """The power of two Pillow's ``draft`` reduces each JPEG by for the largest target of ``keys``
    (``dims``: (n, 2) heights and widths; one vectorised pass, no Python work per image)."""
    scale = np.minimum(dims[:, 1] // max(k[0][2] for k in keys), dims[:, 0] // max(k[0][1] for k in keys))
    return np.select([scale >= 8, scale >= 4, scale >= 2], [8, 4, 2], 1).astype(np.int64)


def to_channels(x: torch.Tensor, c: int) -> torch.Tensor:
    """uint8 (N, C0, H, W) → C channels: grey → RGB by repetition, RGB → grey with Pillow's weights
    (``L = (19595 R + 38470 G + 7471 B + 2^15) >> 16``)."""
    if x.shape[1] == c:
        return x
    if c == 3:
        return x.expand(-1, 3, -1, -1)
    w = x.to(torch.int32)
    return ((w[:, 0] * 19595 + w[:, 1] * 38470 + w[:, 2] * 7471 + 0x8000) >> 16).to(torch.uint8)[:, None]


PREPROCESS_PIXELS = 1 << 25  # padded pixels per batched resize: ≤ 400 MB of float32 RGB on the device


def resize_filter(x: torch.Tensor, interpolation: str) -> torch.Tensor:
    """Pillow's resampling filters: the triangle (bilinear) and Keys' cubic with a = −0.5 (bicubic)."""
    x = x.abs()
    if interpolation == "bilinear":
        return (1 - x).clamp_(min=0)
    a = -0.5
    return torch.where(x < 1, ((a + 2) * x - (a + 3)) * x * x + 1,
                       torch.where(x < 2, (((x - 5) * x + 8) * x - 4) * a, torch.zeros_like(x)))


def host_sizes(sizes) -> np.ndarray:
    """Sizes as a host int64 array (a tensor is read once; the band widths below need no device sync)."""
    return (sizes.cpu().numpy() if isinstance(sizes, torch.Tensor) else np.asarray(sizes)).astype(np.int64)


def weights_device(sizes, device) -> torch.device:
    """Where weight matrices go: ``device`` if given, else the sizes tensor's device, else the CPU."""
    if device is not None:
        return torch.device(device)
    return sizes.device if isinstance(sizes, torch.Tensor) else torch.device("cpu")


def banded(taps: torch.Tensor, weights: torch.Tensor, width: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(n, out, K) column indices and weights → the (n, out, width) matrix holding them (zeros elsewhere).

    Only each row's K taps are computed, not all ``width`` columns: on an H200 the dense formula's
    elementwise kernels cost about as much device time as the resize's matrix products. Taps
    outside the image carry a zero weight (their clamped index adds exactly 0)."""
    n, out, _ = taps.shape
    dense = torch.zeros((n, out, width), dtype=dtype, device=weights.device)
    return dense.scatter_add_(2, taps.clamp(0, width - 1).long(), weights.to(dtype))


def resize_weights(sizes, out: int, width: int, interpolation: str, *, device: torch.device | str | None = None,
                   dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(n, out, width) matrices resizing rows of ``sizes[i]`` valid pixels (zero-padded to ``width``)
    to ``out`` pixels: ``y = W @ x``. ``sizes``: host ints (or a tensor); ``device``: where the
    matrices go (default: the tensor's, else the CPU).

    The weights of Pillow's antialiased resampling (what ``F.interpolate(antialias=True)`` computes):
    output pixel k centred at c = s (k + ½), s = size / out, takes input pixel j with weight
    f((j − c + ½) / max(s, 1)) normalised over the row; nearest-exact takes pixel ⌊s (k + ½)⌋. A size
    equal to ``out`` gives the identity, exactly. f vanishes beyond its support (1 for the triangle,
    2 for the cubic) times max(s, 1), so each row has at most ⌈2 · support · max(s, 1)⌉ + 1 taps."""
    dims, device = host_sizes(sizes), weights_device(sizes, device)
    size = to_device(torch.from_numpy(dims.astype(np.float32)), device)[:, None, None]
    k = torch.arange(out, dtype=torch.float32, device=device)[None, :, None]
    scale = size / out
    if interpolation == "nearest":
        j = torch.minimum(torch.floor((k + 0.5) * scale), size - 1)
        return banded(j, torch.ones_like(j), width, dtype)
    support = 1.0 if interpolation == "bilinear" else 2.0
    taps = int(np.ceil(2 * support * max(float(dims.max(initial=1)) / out, 1.0))) + 2
    stretch = scale.clamp(min=1)
    centre = scale * (k + 0.5)
    j = torch.floor(centre - 0.5 - support * stretch) + torch.arange(taps, dtype=torch.float32, device=device)
    w = resize_filter((j - centre + 0.5) / stretch, interpolation) * ((j >= 0) & (j < size))
    return banded(j, w / w.sum(-1, keepdim=True), width, dtype)


def box_weights(sizes, factors, out: int, width: int, *, device: torch.device | str | None = None,
                dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(n, out, width) matrices averaging blocks of ``factors[i]`` pixels (the last block clipped to
    ``sizes[i]``, as ``F.avg_pool2d(ceil_mode=True)``); a factor of 1 gives the identity. ``sizes`` and
    ``factors``: host ints (or tensors)."""
    dims, fs, device = host_sizes(sizes), host_sizes(factors), weights_device(sizes, device)
    size = to_device(torch.from_numpy(dims), device)[:, None, None]
    f = to_device(torch.from_numpy(fs), device)[:, None, None]
    k = torch.arange(out, device=device)[None, :, None]
    t = torch.arange(int(fs.max(initial=1)), device=device)[None, None, :]
    j = k * f + t
    count = torch.clamp(torch.minimum(f, size - k * f), min=1)
    return banded(j, ((t < f) & (j < size)).to(torch.float32) / count.to(torch.float32), width, dtype)


def separable(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """(n, C, H, W) → (n, C, h, w) = rows[i] @ x[i] @ cols[i]ᵀ in ``x``'s dtype; float32 in full fp32
    (no TF32: the results are rounded to pixel levels). One batched product over all channels'
    rows, then one per channel (a broadcast product would first copy ``rows`` once per channel)."""
    n, c, h0, w0 = x.shape
    with full_fp32():
        y = torch.bmm(x.reshape(n, c * h0, w0), cols.transpose(1, 2)).view(n, c, h0, -1)
        return torch.stack([torch.bmm(rows, y[:, i]) for i in range(c)], 1)


_FP32_LOCK = threading.Lock()
_FP32_USERS = [0, False]  # threads inside ``full_fp32``, the TF32 setting they found


@contextlib.contextmanager
def full_fp32():
    """TF32 off for CUDA matmuls inside the block, restored when the last thread inside leaves
    (the setting is process-wide; the inputs may be prepared on a thread of their own)."""
    with _FP32_LOCK:
        if not _FP32_USERS[0]:
            _FP32_USERS[1] = torch.backends.cuda.matmul.allow_tf32
            torch.backends.cuda.matmul.allow_tf32 = False
        _FP32_USERS[0] += 1
    try:
        yield
    finally:
        with _FP32_LOCK:
            _FP32_USERS[0] -= 1
            if not _FP32_USERS[0]:
                torch.backends.cuda.matmul.allow_tf32 = _FP32_USERS[1]


def padded_chunks(order: list[int], sizes: list[tuple[int, int]], limit: int) -> list[list[int]]:
    """Cut ``order`` into runs whose zero-padded batch (count × max height × max width) stays within
    ``limit`` pixels (a single image may exceed it alone)."""
    chunks, cur, top_h, top_w = [], [], 0, 0
    for i in order:
        h, w = sizes[i]
        nh, nw = max(top_h, h), max(top_w, w)
        if cur and (len(cur) + 1) * nh * nw > limit:
            chunks.append(cur)
            cur, nh, nw = [], h, w
        cur.append(i)
        top_h, top_w = nh, nw
    return chunks + ([cur] if cur else [])


def padded(images: list[torch.Tensor], height: int, width: int, dtype: torch.dtype) -> torch.Tensor:
    """uint8 (C, h, w) images → (n, C, height, width) in ``dtype``, zero-padded at the bottom and right:
    one concatenation, one conversion and one padding kernel (a nested tensor), not a copy per image."""
    shape = (len(images), images[0].shape[0], height, width)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "nested tensors are in prototype stage"
            return torch.nested.as_nested_tensor(images).to(dtype).to_padded_tensor(0.0, output_size=shape)
    except (RuntimeError, NotImplementedError):  # a torch build without this nested-tensor path: image by image
        x = torch.zeros(shape, dtype=dtype, device=images[0].device)
        for n, im in enumerate(images):
            x[n, :, :im.shape[1], :im.shape[2]] = im
        return x


def resize_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The resize's arithmetic for a run at ``precision``: float32 for fp32 runs (the CPU path's
    pixels to rounding) and on a CPU; float16 for bf16 runs on CUDA, whose tensor-core products move
    about one pixel in twenty by one grey level — less than the half grey level to which bf16
    autocast itself rounds a normalised pixel (8 significant bits over about ±2.5 standard
    deviations)."""
    return torch.float16 if precision == "bf16" and device.type == "cuda" else torch.float32


def preprocess(images: list[torch.Tensor], keys: list[tuple], *, precision: str = "fp32") -> dict[tuple, torch.Tensor]:
    """Decoded uint8 images (C0, H, W), all on one device → {key: float32 (N, C, H, W)} normalised;
    the resize computed at the run's ``precision`` (``resize_dtype``).

    Images of every size are processed together: sorted by area, zero-padded into a batch, and each
    step (the reduced-scale decode's box reduction, the resize) is a pair of batched matrix products
    with per-image weight matrices (``resize_weights``, ``box_weights``). Grouping by size instead cost
    one kernel per step per distinct size: on an H200, 10,300 images/s for 224–400 px crops against
    284,700/s for one size."""
    if not images:
        return {k: torch.empty((0, *k[0]), dtype=torch.float32) for k in keys}
    device = images[0].device
    dtype = resize_dtype(precision, device)
    # host-side sizes, vectorised: the scoring thread's Python work per image is what a GPU waits on
    all_dims = np.array([im.shape[1:] for im in images], dtype=np.int64).reshape(-1, 2)
    all_factors = draft_scales(all_dims, keys)
    order = np.lexsort((all_dims[:, 1], all_dims[:, 0], all_dims[:, 0] * all_dims[:, 1])).tolist()  # by area
    parts: dict[tuple, list[torch.Tensor]] = {k: [] for k in keys}
    for chunk in padded_chunks(order, all_dims.tolist(), PREPROCESS_PIXELS):
        dims, factors = all_dims[chunk], all_factors[chunk]
        top_h, top_w = int(dims[:, 0].max()), int(dims[:, 1].max())
        x = padded([images[i] for i in chunk], top_h, top_w, dtype)
        hs, ws = dims[:, 0], dims[:, 1]  # host-side: the weight matrices' shapes need no device sync
        if (factors > 1).any():  # Image.draft's reduced-scale decode ≈ a box reduction, rounded to pixel levels
            out_h, out_w = -(-hs // factors), -(-ws // factors)
            x = separable(x, box_weights(hs, factors, int(out_h.max()), top_h, device=device, dtype=dtype),
                          box_weights(ws, factors, int(out_w.max()), top_w, device=device, dtype=dtype)).round_()
            hs, ws, top_h, top_w = out_h, out_w, int(out_h.max()), int(out_w.max())
        for key in keys:
            (c, h, w), mean, std, interpolation = key
            y = to_channels(x, c).to(dtype)
            mode = "nearest" if GPU_INTERPOLATIONS[interpolation] == "nearest-exact" else interpolation
            y = separable(y, resize_weights(hs, h, top_h, mode, device=device, dtype=dtype),
                          resize_weights(ws, w, top_w, mode, device=device, dtype=dtype))
            parts[key].append(normalise(y.round_().clamp_(0, 255), mean, std))
    back = to_device(torch.from_numpy(np.argsort(np.asarray(order), kind="stable")), device)  # input order
    return {k: torch.cat(v)[back] for k, v in parts.items()}
