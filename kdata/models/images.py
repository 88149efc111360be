"""Image decoding and preprocessing, shared by scoring, dedup, HARD, the trainer and the embedders.

Decoding runs in DataLoader worker processes (``num_workers``) so the models never wait on image
decode; models with the same preprocessing share one decode per batch.
"""

from __future__ import annotations

import io
import re

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

_INTERP = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST,
           "lanczos": Image.LANCZOS, "box": Image.BOX}


def decode_image(data: bytes | None, *, input_size, mean, std, interpolation: str = "bilinear") -> torch.Tensor:
    """Image bytes → normalised float tensor (C, H, W). Raises ValueError on unreadable input."""
    key = (tuple(input_size), tuple(mean), tuple(std), interpolation)
    return decode_multi(data, [key])[key]


def decode_multi(data: bytes | None, keys: list[tuple]) -> dict[tuple, torch.Tensor]:
    """Decode once, preprocess once per key ``(input_size, mean, std, interpolation)``.

    JPEGs are decoded at a reduced DCT scale (``Image.draft``) when the largest target is at most
    half the stored size: libjpeg then skips most of the inverse DCT work; the result is still
    at least the target size before the (antialiased) resize, and deterministic.
    """
    if not data:
        raise ValueError("empty image")
    out = {}
    with Image.open(io.BytesIO(data)) as im:
        if im.format == "JPEG":
            mode = "L" if all(k[0][0] == 1 for k in keys) else "RGB"
            im.draft(mode, (max(k[0][2] for k in keys), max(k[0][1] for k in keys)))
        im.load()
        for key in keys:
            (c, h, w), mean, std, interpolation = key
            img = im.convert("L" if c == 1 else "RGB")
            if img.size != (w, h):
                img = img.resize((w, h), _INTERP.get(interpolation, Image.BILINEAR))
            arr = np.asarray(img, dtype=np.uint8)
            t = torch.from_numpy(arr.copy()).float().div_(255.0)
            t = t[None] if c == 1 else t.permute(2, 0, 1)
            m = torch.tensor(mean, dtype=torch.float32)[:, None, None]
            sd = torch.tensor(std, dtype=torch.float32)[:, None, None]
            out[key] = (t - m) / sd
    return out


_OBJ_REPR = re.compile(r"\s*<[^<>]* object at 0x[0-9a-f]+>")


def decode_error(exc: BaseException) -> str:
    """One stable line for a quarantined sample (no memory addresses)."""
    msg = _OBJ_REPR.sub("", str(exc).splitlines()[0] if str(exc) else "")
    return f"{type(exc).__name__}: {msg}".strip().rstrip(":")


class _DecodeDataset(Dataset):
    """Row i → (i, {preprocess key: tensor}) or (i, error string)."""

    def __init__(self, images: list, keys: list[tuple]):
        self.images, self.keys = images, keys

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        try:
            return i, decode_multi(self.images[i], self.keys)
        except Exception as exc:  # quarantined with its error, the run goes on
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


def worker_context(num_workers: int):
    """Start decode workers from a fork server, not by forking this process.

    Forking a process that runs other threads (a Prefect flow, a served deployment, a Dask
    worker) can kill or hang the child; a fork server is a clean single-threaded parent.
    """
    import multiprocessing as mp

    if not num_workers:
        return None
    return mp.get_context("forkserver") if "forkserver" in mp.get_all_start_methods() else None


def iter_decoded(images: list, keys: list[tuple], *, batch_size: int, num_workers: int, pin: bool = False):
    """Yield (row indices, {key: batch tensor}, [(row, error)]) over ``images``."""
    loader = DataLoader(_DecodeDataset(images, keys), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers, collate_fn=_collate, pin_memory=pin,
                        persistent_workers=False, prefetch_factor=4 if num_workers else None,
                        multiprocessing_context=worker_context(num_workers))
    yield from loader


# ------------------------------------------------------------------------------------------------
# Scoring

