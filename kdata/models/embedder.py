"""Image embedders for dedup and the critic: open_clip's image tower, or any model with features."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from kdata.core.errors import KdataError
from kdata.models.clip import open_clip_model, preprocess_of
from kdata.models.forward import probe_outputs
from kdata.models.sidecar import pool_class_names
from kdata.models.images import iter_decoded
from kdata.models.spec import load_model


@dataclass
class Embedder:
    spec: str
    input_size: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str
    checksum: str
    dim: int
    fn: Callable[[torch.Tensor], torch.Tensor]  # normalised (B, C, H, W) → (B, dim) float32, unit norm
    device: torch.device

    @property
    def preprocess_key(self) -> tuple:
        return (self.input_size, self.mean, self.std, self.interpolation)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.fn(x.to(self.device))

    def embed_images(self, images: list, *, batch_size: int = 256, num_workers: int = 0
                     ) -> tuple[np.ndarray, np.ndarray, list[tuple[int, str]]]:
        """Image bytes → (float32 [n_ok, dim] embeddings, their row indices, [(row, error)] undecodable)."""
        out, rows, bad = [], [], []
        for idx, batch, errs in iter_decoded(images, [self.preprocess_key], batch_size=batch_size,
                                             num_workers=num_workers, pin=self.device.type == "cuda"):
            bad += errs
            if len(idx):
                out.append(self(batch[self.preprocess_key]).float().cpu().numpy())
                rows.append(idx.numpy())
        if not out:
            return np.zeros((0, self.dim), np.float32), np.zeros(0, np.int64), bad
        return np.concatenate(out), np.concatenate(rows), bad


def embedder(spec: str, *, device="cpu") -> Embedder:
    """An image embedder from a model spec: open_clip's image tower, or any model with features."""
    device = torch.device(device)
    if spec.startswith("open_clip:"):
        model, _arch, checksum, _ = open_clip_model(spec)
        visual = model.visual.to(device).eval()
        input_size, mean, std, interp = preprocess_of(model)

        def fn(x):
            return F.normalize(visual(x).float(), dim=-1)

        _, dim = probe_outputs(lambda x: (torch.zeros(x.shape[0], 1), fn(x)), input_size, device, where=spec)
        return Embedder(spec, input_size, mean, std, interp, checksum, dim, fn, device)
    with pool_class_names(None):
        model = load_model(spec, device=device)
    _, dim = probe_outputs(model.forward, model.input_size, device, where=spec)
    if dim is None:
        raise KdataError(f"{spec}: model exposes no features to embed with (export it with outputs "
                         "[\"logits\", \"features\"] or use open_clip:ARCH:WEIGHTS)")

    def fn(x):
        return F.normalize(model.forward(x)[1].float(), dim=-1)

    return Embedder(spec, model.input_size, model.mean, model.std, model.interpolation, model.checksum, dim, fn,
                    device)
