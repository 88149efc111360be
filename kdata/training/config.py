"""The trainers' hyper-parameters, free of torch so the CLI can show their defaults without loading it."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, replace

from kdata.core.device_names import check_device_name
from kdata.core.errors import KdataError

# benchmarks/text_lr.py: AdamW lr for distilling a causal-LM student on a curated builtin:text-web set
BUILTIN_TEXT_LR = 1e-2  # the built-in text student, barely pre-trained: the largest gain in perplexity
PRETRAINED_TEXT_LR = 1e-4  # any other student: 1e-2 made pre-trained students worse than they started
GIVEN_LR = "given (--lr, or the caller's config: I2D2 rounds fix one rate from their first student)"


@dataclass(kw_only=True)
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

    def __post_init__(self):
        check_common(self)
        if self.alpha is not None:
            check_fraction("--alpha", self.alpha)
        if self.loss not in ("kd", "nkd"):
            raise KdataError(f"--loss {self.loss}: expected kd or nkd")
        check_number("nkd_gamma", self.nkd_gamma, low=0.0)
        check_workers(self.workers)
        check_whole("--reselect-every", self.reselect_every, low=0)
        if self.reselect_threshold is not None:
            check_fraction("--reselect-threshold", self.reselect_threshold)


@dataclass(kw_only=True)
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

    def __post_init__(self):
        check_common(self, epochs_low=0 if _whole(self.steps) and self.steps >= 1 else 1)
        check_fraction("--alpha", self.alpha)
        check_whole("max_length", self.max_length, low=1)


SEED_MAX = 2**64 - 1  # the largest seed torch takes


def _whole(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def check_whole(name: str, value, *, low: int, high: int | None = None, high_text: str = "") -> None:
    """``value`` is a whole number in [low, high]: one KdataError line naming the option otherwise."""
    if high is not None and not (_whole(value) and low <= value <= high):
        raise KdataError(f"{name} {value!r}: must be a whole number from {low} to {high_text or high}")
    if not _whole(value):
        raise KdataError(f"{name} {value!r}: must be a whole number ≥ {low}")
    if value < low:
        raise KdataError(f"{name} {value}: must be at least {low}")


def check_number(name: str, value, *, low: float, above: bool = False) -> None:
    """``value`` is a finite number ≥ ``low`` (> ``low`` with ``above``): one KdataError line otherwise."""
    if not (_real(value) and (value > low if above else value >= low)):
        raise KdataError(f"{name} {value!r}: must be a finite number {'>' if above else '≥'} {low:g}")


def check_fraction(name: str, value) -> None:
    """``value`` is a number in [0, 1]: one KdataError line otherwise."""
    if not (_real(value) and 0.0 <= value <= 1.0):
        raise KdataError(f"{name} {value!r}: must be within [0, 1]")


def check_workers(value) -> None:
    """``workers``: ``auto`` or a whole number ≥ 0 (the form ``--workers`` takes everywhere)."""
    if value == "auto" or (_whole(value) and value >= 0):
        return
    raise KdataError(f"--workers {value}: expected auto or a whole number ≥ 0")


def check_common(cfg, *, epochs_low: int = 1) -> None:
    """The options both trainers take, each checked before any work (one KdataError line each)."""
    check_whole("--epochs", cfg.epochs, low=epochs_low)
    check_whole("--steps", cfg.steps, low=0)
    check_whole("--batch-size", cfg.batch_size, low=1)
    if cfg.lr is not None:
        check_number("--lr", cfg.lr, low=0.0, above=True)
    check_number("weight_decay", cfg.weight_decay, low=0.0)
    check_number("--temperature", cfg.temperature, low=0.0, above=True)
    check_whole("--seed", cfg.seed, low=0, high=SEED_MAX, high_text="2**64 - 1")
    check_device_name(cfg.device)


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
