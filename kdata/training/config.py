"""The trainers' hyper-parameters, free of torch so the CLI can show their defaults without loading it."""

from __future__ import annotations

from dataclasses import dataclass, replace

# benchmarks/text_lr.py: AdamW lr for distilling a causal-LM student on a curated builtin:text-web set
BUILTIN_TEXT_LR = 1e-2  # the built-in text student, barely pre-trained: the largest gain in perplexity
PRETRAINED_TEXT_LR = 1e-4  # any other student: 1e-2 made pre-trained students worse than they started
GIVEN_LR = "given (--lr, or the caller's config: I2D2 rounds fix one rate from their first student)"


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
    lr: float | None = None  # None: by the student (``text_lr``)
    weight_decay: float = 0.01
    alpha: float = 0.5
    temperature: float = 1.0  # classifier targets only (LM top-k log-probs are stored at T = 1)
    max_length: int = 512  # capped by the student's position limit (64 for builtin:text-student)
    seed: int = 0
    device: str = "auto"
    keep_best: bool = False  # with an eval set: measure every epoch, end with the best weights (start included)


def text_lr(given: float | None, student: str) -> tuple[float, str]:
    """The text trainer's learning rate and why: ``given``, else by the student — the built-in text
    student was pre-trained for a few steps only and gains most at ``BUILTIN_TEXT_LR``; a model of your
    own is taken to be pre-trained, where that rate undoes what it knew (``PRETRAINED_TEXT_LR``)."""
    if given is not None:
        return float(given), GIVEN_LR
    if str(student).startswith("builtin:text"):
        return BUILTIN_TEXT_LR, f"default for the built-in text student ({BUILTIN_TEXT_LR:g})"
    return PRETRAINED_TEXT_LR, f"default for a pre-trained student ({PRETRAINED_TEXT_LR:g}; --lr to change it)"


def with_text_lr(cfg: TextTrainConfig, student: str) -> TextTrainConfig:
    """``cfg`` with its learning rate resolved for ``student`` (``text_lr``)."""
    return replace(cfg, lr=text_lr(cfg.lr, student)[0])
