"""HARD's augmentation parameter space: names, bounds, the squashing of θ into them, and the config.

One learnable vector θ ∈ R^P per generated sample is squashed by tanh into the bounds ``b`` of
``DEFAULT_BOUNDS`` (overridable per run through ``HardConfig.bounds``):

* symmetric ``v = b·tanh θ`` — rotation, shear (degrees), translation (fraction of the image
  size), brightness (added, pixel units in [0, 1]);
* multiplicative ``v = exp(ln b · tanh θ)`` ∈ [1/b, b] — scale, contrast;
* one-sided ``v = b·(1 + tanh θ)/2`` ∈ [0, b] — Gaussian blur σ (pixels), noise std (pixel units).
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
from dataclasses import dataclass, field

import torch

from kdata.core.errors import KdataError

PARAM_NAMES = ("rotation_deg", "scale", "shear_deg", "translate_x", "translate_y",
               "brightness", "contrast", "blur_sigma", "noise_std")
# How each parameter is squashed: "sym" symmetric, "log" multiplicative, "one" one-sided.
PARAM_KIND = {"rotation_deg": "sym", "shear_deg": "sym", "translate_x": "sym", "translate_y": "sym",
              "brightness": "sym", "scale": "log", "contrast": "log", "blur_sigma": "one", "noise_std": "one"}
# The magnitude b of each parameter (see the module docstring for how b bounds it).
DEFAULT_BOUNDS = {"rotation_deg": 20.0, "scale": 1.15, "shear_deg": 15.0, "translate_x": 0.1,
                  "translate_y": 0.1, "brightness": 0.15, "contrast": 1.4, "blur_sigma": 1.0,
                  "noise_std": 0.05}
# How a generated row's random draws are seeded (recorded as ``HardConfig.seeding``, so it is part of
# the run's identity: outputs made under another scheme are never taken for this one's). "per-row-v2":
# each row has its own generators, seeded from sha256(seed, parent id, final copy index, stream), and
# every model call runs on blocks of ``kdata.augment.transforms.MODEL_BLOCK`` rows; the earlier scheme
# drew every row from one generator in chunk order (batch-size dependent, and repeated byte for byte
# when an augmented dataset was augmented again).
SEEDING = "per-row-v2"


@dataclass(frozen=True)
class HardConfig:
    """How HARD generates and filters (all recorded in the manifest)."""

    per_sample: int = 1  # generated rows per parent
    steps: int = 10  # optimiser (or random-search) steps
    lr: float = 0.25  # Adam step on θ (the pre-tanh parameters)
    temperature: float | None = None  # softening of the KL objective; None: the soft labels' temperature
    flip_weight: float = 2.0  # λ of the teacher-flip hinge
    flip_margin: float = 0.5  # m: teacher logit margin kept for the parent's class
    search_candidates: int = 8  # random-search proposals per sample and step
    batch_size: int = 256  # generated samples per optimisation batch
    seed: int = 0
    bounds: tuple = ()  # ((name, b), ...) overrides of DEFAULT_BOUNDS
    critic_threshold: float = 0.5
    consistency_draws: int = 4
    random_search: bool = False  # force the gradient-free path
    seeding: str = field(default=SEEDING, init=False)  # the seeding scheme (``SEEDING``), not settable

    def __post_init__(self):  # a plain float: recorded in the manifest as a JSON number
        object.__setattr__(self, "critic_threshold", check_critic_threshold(self.critic_threshold))
        # in the instance's __dict__ (the run's hashed config, the manifest's ``hard.config``), not only the class's
        object.__setattr__(self, "seeding", SEEDING)

    def bound_values(self) -> dict[str, float]:
        """``DEFAULT_BOUNDS`` with this config's overrides, each checked (one clear line if wrong)."""
        b = dict(DEFAULT_BOUNDS)
        for name, v in dict(self.bounds).items():
            if name not in b:
                raise KdataError(f"HARD bounds: unknown parameter '{name}' (known: {', '.join(PARAM_NAMES)})")
            if not v > 0 or (PARAM_KIND[name] == "log" and not v > 1):
                raise KdataError(f"HARD bounds: '{name}' must be > {1 if PARAM_KIND[name] == 'log' else 0}, got {v}")
            b[name] = float(v)
        return b


def check_critic_threshold(value) -> float:
    """The default critic's cut: a finite number in [0, 1] (NaN would accept every row), else one line."""
    real = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not (real and math.isfinite(value) and 0 <= value <= 1):
        shown = f"{float(value):g}" if real else repr(value)
        raise KdataError(f"--critic-threshold {shown}: must be a finite number in [0, 1]")
    return float(value)


def param_ranges(bounds: dict[str, float] | None = None) -> dict[str, tuple[float, float]]:
    """The closed interval each parameter can take under ``bounds``."""
    b = bounds or DEFAULT_BOUNDS
    out = {}
    for name in PARAM_NAMES:
        kind, v = PARAM_KIND[name], b[name]
        out[name] = (-v, v) if kind == "sym" else (1.0 / v, v) if kind == "log" else (0.0, v)
    return out


def squash(theta: torch.Tensor, bounds: dict[str, float]) -> torch.Tensor:
    """θ (N, P) → bounded parameter values (N, P) in PARAM_NAMES order."""
    t = torch.tanh(theta)
    cols = []
    for j, name in enumerate(PARAM_NAMES):
        b = bounds[name]
        kind = PARAM_KIND[name]
        if kind == "sym":
            cols.append(b * t[:, j])
        elif kind == "log":
            cols.append(torch.exp(math.log(b) * t[:, j]))
        else:
            cols.append(b * (t[:, j] + 1) / 2)
    return torch.stack(cols, 1)


def row_seeds(seed: int, parent_ids: list[str], copies, stream: str) -> list[int]:
    """One 63-bit seed per generated row: sha256 of (scheme, ``seed``, parent id, final copy index, stream).

    The copy index is the final one (after an id already in the dataset moved it to ``#hard<c+K>``),
    so a row's draws depend only on which row it is: not on the batch size, the chunking or the
    other rows, and a new copy of a parent is a new augmentation, never a repeat of an earlier one.
    ``stream`` separates independent uses (the search, the default critic's jitter).
    """
    out = []
    for pid, c in zip(parent_ids, copies):
        key = json.dumps([SEEDING, int(seed), str(pid), int(c), stream])  # ASCII: json escapes the rest
        out.append(int.from_bytes(hashlib.sha256(key.encode("ascii")).digest()[:8], "big") >> 1)
    return out


def generators(seeds: list[int]) -> list[torch.Generator]:
    """A CPU ``torch.Generator`` per seed (make them per chunk: each holds a few KB of state)."""
    return [torch.Generator().manual_seed(int(s)) for s in seeds]


def start_theta(gens: list[torch.Generator]) -> torch.Tensor:
    """Starting θ (len(gens), P): row i drawn from ``gens[i]`` alone (``init_theta`` of one sample)."""
    return torch.cat([init_theta(1, g) for g in gens]) if gens else torch.zeros(0, len(PARAM_NAMES))


def row_normal(gens: list[torch.Generator], shape) -> torch.Tensor:
    """A standard normal tensor (len(gens), *shape): row i drawn from ``gens[i]`` alone."""
    return torch.stack([torch.randn(tuple(shape), generator=g) for g in gens]) if gens \
        else torch.zeros(0, *shape)


def init_theta(n: int, gen: torch.Generator) -> torch.Tensor:
    """Seeded starting θ for ``n`` samples: near the identity, one-sided parameters near zero."""
    theta = 0.5 * torch.randn(n, len(PARAM_NAMES), generator=gen)
    for j, name in enumerate(PARAM_NAMES):
        if PARAM_KIND[name] == "one":
            theta[:, j] = -1.0 + 0.3 * torch.randn(n, generator=gen)  # start near no blur / no noise
    return theta
