"""Image decoding and preprocessing, shared by scoring, dedup, HARD, the trainer and the embedders.

Decoding runs in DataLoader worker processes (``num_workers``) so the models never wait on image
decode; models with the same preprocessing share one decode per batch.
"""

from __future__ import annotations

import functools
import re

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from kdata.core.errors import KdataError
from kdata.models.pixels import (DEFAULT_MAX_PIXELS, SWAPPED, open_capped, open_image, orientation,  # noqa: F401
                                 upright_8bit)  # (re-exported)

_INTERP = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST,
           "lanczos": Image.LANCZOS, "box": Image.BOX}




def check_max_pixels(max_pixels) -> int:
    """``--max-pixels`` as an int ≥ 1, or one line."""
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
        raise KdataError(f"--max-pixels {max_pixels!r}: must be a whole number of pixels ≥ 1")
    return max_pixels


def decode_image(data: bytes | None, *, input_size, mean, std, interpolation: str = "bilinear",
                 max_pixels: int | None = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """Image bytes → normalised float tensor (C, H, W). Raises ValueError on unreadable input."""
    key = (tuple(input_size), tuple(mean), tuple(std), interpolation)
    return decode_multi(data, [key], max_pixels=max_pixels)[key]


def normalise(x: torch.Tensor, mean, std, *, out: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 pixels (C, H, W) or (N, C, H, W) → ``(x / 255 − mean) / std`` in float32 (into ``out`` if given).

    Element by element the same IEEE operations whether one image or a batch, on any device, so a
    batch normalised after collation is bit-identical to its images normalised one by one. On a
    CPU the 256 possible results per channel are computed once with those operations and looked
    up (``levels``): the same bits at a third of the cost."""
    if x.dtype == torch.uint8 and x.device.type == "cpu":
        table, a = levels(tuple(mean), tuple(std)), x.numpy()
        o = out.numpy() if out is not None else np.empty(a.shape, np.float32)
        for c in range(a.shape[-3]):
            np.take(table[c], a[..., c, :, :], out=o[..., c, :, :], mode="clip")  # clip: no buffering
        return out if out is not None else torch.from_numpy(o)
    y = normalise_arithmetic(x, mean, std)
    return out.copy_(y) if out is not None else y


def normalise_arithmetic(x: torch.Tensor, mean, std) -> torch.Tensor:
    shape = (-1, 1, 1) if x.ndim == 3 else (1, -1, 1, 1)
    m, sd = channel_constants(tuple(mean), tuple(std), x.device)
    return (x.float().div_(255.0) - m.reshape(shape)) / sd.reshape(shape)


@functools.lru_cache(maxsize=64)
def channel_constants(mean: tuple, std: tuple, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``mean`` and ``std`` as float32 tensors on ``device``, made once: building them per batch would
    be a blocking host-to-GPU copy, which waits for every kernel already queued."""
    return (torch.tensor(mean, dtype=torch.float32, device=device),
            torch.tensor(std, dtype=torch.float32, device=device))


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small host tensor on ``device`` without stalling a GPU: pinned, then copied asynchronously
    (a plain copy from pageable memory synchronises the stream, ending the overlap of host and GPU)."""
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


@functools.lru_cache(maxsize=64)
def levels(mean: tuple, std: tuple) -> np.ndarray:
    """(C, 256) float32: each uint8 level normalised per channel by ``normalise_arithmetic``."""
    v = torch.arange(256, dtype=torch.uint8).repeat(len(mean), 1)[:, None, :]
    return normalise_arithmetic(v, mean, std)[:, 0, :].numpy()


def decode_multi(data: bytes | None, keys: list[tuple], *,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS) -> dict[tuple, torch.Tensor]:
    """Decode once, preprocess once per key ``(input_size, mean, std, interpolation)`` (float, normalised)."""
    return {k: normalise(v, k[1], k[2]) for k, v in decode_multi_u8(data, keys, max_pixels=max_pixels).items()}


def decode_multi_u8(data: bytes | None, keys: list[tuple], *,
                    max_pixels: int | None = DEFAULT_MAX_PIXELS) -> dict[tuple, torch.Tensor]:
    """Decode once, resize once per key ``(input_size, mean, std, interpolation)``: uint8 (C, H, W).

    An image over ``max_pixels`` (from its header) is refused before decoding (ValueError).
    JPEGs are decoded at a reduced DCT scale (``Image.draft``) when the largest target is at most
    half the stored size: libjpeg then skips most of the inverse DCT work; the result is still
    at least the target size before the (antialiased) resize, and deterministic. The decoded image is
    then made upright and 8-bit (``upright_8bit``: EXIF orientation, 16-bit/``I``/``F`` greys scaled).
    """
    if not data:
        raise ValueError("empty image")
    out = {}
    with open_capped(data, max_pixels) as stored:
        if stored.format == "JPEG":
            mode = "L" if all(k[0][0] == 1 for k in keys) else "RGB"
            size = (max(k[0][2] for k in keys), max(k[0][1] for k in keys))
            stored.draft(mode, size[::-1] if orientation(stored) in SWAPPED else size)  # the stored axes
        stored.load()
        im = upright_8bit(stored)
        for key in keys:
            (c, h, w), _, _, interpolation = key
            img = im.convert("L" if c == 1 else "RGB")
            if img.size != (w, h):
                img = img.resize((w, h), _INTERP.get(interpolation, Image.BILINEAR))
            t = torch.from_numpy(np.array(img, dtype=np.uint8))
            out[key] = t[None] if c == 1 else t.permute(2, 0, 1)
    return out


# Marker codes that may follow a 0xFF byte once the first scan has started (ITU T.81 B.1.1.2, B.2.4):
# stuffing (0x00), fill bytes, restarts, the end of the image, and the tables, scans, comments and
# application segments that separate the scans of a progressive JPEG. Anything else there — a
# second SOI, a frame header — is a broken file that libjpeg refuses.
_SCAN_MARKERS = np.zeros(256, dtype=bool)
_SCAN_MARKERS[[0x00, 0xFF, *range(0xD0, 0xD8), 0xD9, 0xDA, 0xC4, 0xCC, 0xDB, 0xDC, 0xDD, 0xFE, *range(0xE0, 0xF0)]] = True


def jpeg_structure_ok(data: bytes) -> bool:
    """Whether a JPEG's marker structure is intact: it ends with its end-of-image marker (up to 4 KiB
    of trailing zero padding allowed) and no stray marker sits inside its scans.

    nvJPEG decodes files with either fault without an error (seen on an H200: a truncated JPEG, a
    frame marker inside the scan), where Pillow refuses them; such files go to the CPU decoder
    instead, so they are quarantined on a GPU exactly as on a CPU. One vectorised pass over the
    bytes, in the decode workers."""
    if data[-4096:].rstrip(b"\x00")[-2:] != b"\xff\xd9":  # the tail only: no copy of the whole file
        return False
    sos = data.find(b"\xff\xda")
    if sos < 0:
        return False
    a = np.frombuffer(data, dtype=np.uint8)
    ff = np.flatnonzero(a[sos + 2:-1] == 0xFF) + sos + 2
    return bool(_SCAN_MARKERS[a[ff + 1]].all())


def gpu_jpeg_pixels(data: bytes | None, max_pixels: int | None) -> int:
    """The pixel count of a JPEG that nvJPEG can decode as Pillow would (baseline/progressive, RGB or
    grey, an intact marker structure: ``jpeg_structure_ok``, no EXIF rotation, which nvJPEG ignores)
    within ``max_pixels``, read from its header; 0 for anything else (PNG, WebP, CMYK, rotated,
    oversize, truncated, unreadable), which is decoded on the CPU, refused or quarantined there
    exactly as without a GPU."""
    if not data or data[:3] != b"\xff\xd8\xff" or not jpeg_structure_ok(data):
        return 0
    try:
        with open_capped(data, max_pixels) as im:  # the header only
            ok = im.format == "JPEG" and im.mode in ("RGB", "L") and orientation(im) == 1  # nvJPEG: no EXIF
            return im.size[0] * im.size[1] if ok else 0
    except Exception:  # noqa: BLE001  (the CPU decode reports it)
        return 0


_OBJ_REPR = re.compile(r"\s*<[^<>]* object at 0x[0-9a-f]+>")


def decode_error(exc: BaseException) -> str:
    """One stable line for a quarantined sample (no memory addresses)."""
    msg = _OBJ_REPR.sub("", str(exc).splitlines()[0] if str(exc) else "")
    return f"{type(exc).__name__}: {msg}".strip().rstrip(":")


class _DecodeDataset(Dataset):
    """Row i → (i, {preprocess key: tensor}) or (i, error string)."""

    def __init__(self, images: list, keys: list[tuple], *, errors: list | None = None,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS):
        self.images, self.keys, self.errors, self.max_pixels = images, keys, errors, max_pixels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        if self.errors is not None and self.errors[i]:  # the pool reader could not read it: say why
            return i, self.errors[i]
        try:
            return i, decode_multi(self.images[i], self.keys, max_pixels=self.max_pixels)
        except Exception as exc:  # noqa: BLE001  (quarantined with its error, the run goes on)
            return i, decode_error(exc)


def _collate(items):
    ok = [(i, d) for i, d in items if isinstance(d, dict)]
    bad = [(i, d) for i, d in items if not isinstance(d, dict)]
    idx = torch.tensor([i for i, _ in ok], dtype=torch.long)
    batch = {}
    if ok:
        for key in ok[0][1]:
            batch[key] = torch.stack([d[key] for _, d in ok])
    return idx, batch, bad


# Modules a decode worker needs, imported once by the fork server instead of by every worker it starts
# (importing torch costs seconds per process; a fork of a server that has it costs milliseconds).
WORKER_PRELOAD = ("torch", "numpy", "PIL.Image", "PIL.JpegImagePlugin", "PIL.PngImagePlugin", "kdata.models.decode_pool",
                  "kdata.pools.spec")


def worker_context(num_workers: int):
    """Start decode workers from a fork server, not by forking this process.

    Forking a process that runs other threads (a Prefect flow, a served deployment, a Dask
    worker) can kill or hang the child; a fork server is a clean single-threaded parent. It
    preloads ``WORKER_PRELOAD`` (when this process starts it), so a worker starts in milliseconds.
    """
    import multiprocessing as mp

    if not num_workers:
        return None
    from kdata.core.main_guard import check_not_importing_main

    check_not_importing_main()  # a script without a __main__ guard, re-run by the fork server: say so
    if "forkserver" not in mp.get_all_start_methods():
        return None
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["__main__", *WORKER_PRELOAD])
    return ctx


def iter_decoded(images: list, keys: list[tuple], *, batch_size: int, num_workers: int, pin: bool = False,
                 errors: list | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS):
    """Yield (row indices, {key: batch tensor}, [(row, error)]) over ``images``.

    ``errors[i]`` (a pool reader's ``read_error``), when set, quarantines row i with that text
    without decoding; an image over ``max_pixels`` is quarantined before it is decoded."""
    dataset = _DecodeDataset(images, keys, errors=errors, max_pixels=max_pixels)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False,
                        num_workers=num_workers, collate_fn=_collate, pin_memory=pin,
                        persistent_workers=False, prefetch_factor=4 if num_workers else None,
                        multiprocessing_context=worker_context(num_workers))
    yield from loader


# ------------------------------------------------------------------------------------------------
# Scoring

