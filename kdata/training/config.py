"""The trainers' hyper-parameters, free of torch so the CLI can show their defaults without loading it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TrainConfig:
    """Hyper-parameters of a distillation run (defaults tuned by ``benchmarks/quality.py``)."""

    epochs: int = 12
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    temperature: float = 1.0
    alpha: float | None = None  # None: chosen by the kept fraction (kdata.training.budget.alpha_for_fraction)
    loss: str = "kd"  # "kd" | "nkd"
    nkd_gamma: float = 1.5
    seed: int = 0
    reinit: bool = False
    workers: int | str = "auto"
    device: str = "auto"
    reselect_every: int = 0
    reselect_threshold: float | None = None  # KD³'s confidence cut τ for the re-selections
    eval_every_epoch: bool = True
    keep_best: bool = True  # with an eval set every epoch: end with the best weights on it (start included)
    augment: bool = True  # light random affine jitter of each batch (labels stay valid)
    steps: int = 0  # > 0: stop after exactly this many optimiser steps (equal-steps training); epochs follow


@dataclass
class TextTrainConfig:
    """Hyper-parameters of a text distillation run."""

    epochs: int = 6
    steps: int = 0  # > 0: exactly this many optimiser steps (epochs follow)
    batch_size: int = 16
    lr: float = 1e-2  # measured on a 350-row curated builtin:text-web set, 6 epochs: 121 ppl; 2e-2: 153; α=0: 175
    weight_decay: float = 0.01
    alpha: float = 0.5
    temperature: float = 1.0  # classifier targets only (LM top-k log-probs are stored at T = 1)
    max_length: int = 512  # capped by the student's position limit (64 for builtin:text-student)
    seed: int = 0
    device: str = "auto"
    keep_best: bool = False  # with an eval set: measure every epoch, end with the best weights (start included)
