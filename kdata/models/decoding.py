"""Sampling settings of the teacher LM (``kdata generate``), free of torch for option parsing."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from kdata.core.errors import KdataError


@dataclass(frozen=True)
class DecodeConfig:
    """Decoding settings recorded with every candidate."""

    temperature: float = 1.0
    top_p: float = 0.95
    max_new_tokens: int = 48
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def check_decode(cfg: DecodeConfig) -> None:
    """One line for settings that cannot sample."""
    if not (cfg.temperature > 0 and np.isfinite(cfg.temperature)):
        raise KdataError(f"--temperature {cfg.temperature}: must be > 0")
    if not 0 < cfg.top_p <= 1:
        raise KdataError(f"--top-p {cfg.top_p}: must be in (0, 1]")
    if cfg.max_new_tokens < 1:
        raise KdataError(f"--max-new-tokens {cfg.max_new_tokens}: must be ≥ 1")
