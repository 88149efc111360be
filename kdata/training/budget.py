"""What the size of the kept set changes in training: the KD weight α and the number of optimiser steps.

**α by kept fraction.** Ben-Baruch et al. ("Distilling the Knowledge in Data Pruning", ICML 2025)
train on pruned subsets with L = α·KD + (1 − α)·CE and find that the best KD weight grows as the
kept fraction f shrinks: with few rows kept, the teacher's soft labels carry most of what the
student can learn and the (noisy, web) hard labels hurt more. The paper gives the trend, not a
formula; the rule here is ours and piecewise linear in f:

    α(f) = ALPHA_SMALL                                        for f ≤ F_SMALL
    α(f) = ALPHA_SMALL + (ALPHA_LARGE − ALPHA_SMALL)·(f − F_SMALL)/(F_LARGE − F_SMALL)  in between
    α(f) = ALPHA_LARGE                                        for f ≥ F_LARGE

It is non-increasing in f, meets the trainer's former fixed default (0.9) from half the pool up, and
reaches its largest value at 10% and below. The endpoints were checked on ``builtin:digits-web``
(see docs/training.md). f comes from the curated dataset's manifest: kept rows / input rows
(``counts.kept / counts.n_in``), followed back through the sources of a derived dataset (dedup,
augment) to the original pool; without a manifest the rule cannot apply and α is ALPHA_LARGE. KD³
re-selections keep the α of the dataset training started from.

**Equal optimiser steps.** ``--steps N`` trains for exactly N optimiser steps whatever the data
size, so a small kept set is compared with the full pool at equal compute (Sorscher et al. 2022 and
Ben-Baruch et al. compare pruned sets this way too); the epochs follow: ceil(N / steps per epoch),
the last one possibly partial.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from kdata.core.errors import KdataError
from kdata.dataset.manifest import MANIFEST

ALPHA_SMALL, ALPHA_LARGE = 0.95, 0.9
F_SMALL, F_LARGE = 0.10, 0.50
RULE = (f"α = {ALPHA_SMALL} for kept fraction ≤ {F_SMALL:.0%}, linear down to {ALPHA_LARGE} at "
        f"{F_LARGE:.0%} and above (Ben-Baruch et al., ICML 2025: the KD weight should grow as the subset shrinks)")


def alpha_for_fraction(fraction: float | None) -> float:
    """The KD weight α for a kept fraction ``fraction`` of the pool (see the module docstring); ALPHA_LARGE
    when the fraction is unknown. Non-increasing in the fraction."""
    if fraction is None:
        return ALPHA_LARGE
    if not math.isfinite(fraction) or fraction < 0:
        raise KdataError(f"kept fraction {fraction}: must be a finite number ≥ 0")
    if fraction <= F_SMALL:
        return ALPHA_SMALL
    if fraction >= F_LARGE:
        return ALPHA_LARGE
    t = (fraction - F_SMALL) / (F_LARGE - F_SMALL)
    return round(ALPHA_SMALL + (ALPHA_LARGE - ALPHA_SMALL) * t, 3)


def kept_fraction(root: Path | None) -> tuple[float | None, str]:
    """(kept rows / input rows of the original pool, where it came from) from the manifest of the curated
    dataset at ``root``; (None, why) when there is no manifest or it holds no counts.

    A derived dataset (``kdata dedup`` / ``kdata augment``) counts from its source's rows, not the pool's;
    its manifest records the source (``source.counts``, ``source.path``), so the fraction is followed back
    to the pool: the product of kept / input at every step (a dedup keeping 400 of a 437-row selection
    of 1,457 is 400 / 1,457; an augment keeps every input row and adds generated ones, so it is its
    source's fraction)."""
    if root is None:
        return None, f"no {MANIFEST} beside the shards"
    path = Path(root) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        return None, f"{path}: no counts.kept / counts.n_in"
    return manifest_fraction(manifest, path=path)


def manifest_fraction(manifest, *, path) -> tuple[float | None, str]:
    """``kept_fraction`` of a manifest already read (``path``: where it is, for the explanation)."""
    try:
        kept, n_in = _counts(manifest.get("counts"))
    except (KeyError, TypeError, ValueError, AttributeError):
        return None, f"{path}: no counts.kept / counts.n_in"
    if n_in <= 0:
        return None, f"{path}: counts.n_in is 0"
    fraction, where = kept / n_in, [f"{path}: counts.kept {kept} / counts.n_in {n_in}"]
    for source in _sources(manifest):
        fraction *= source[0] / source[1]
        where.append(f"× its source {source[2]}: {source[0]} / {source[1]}")
    return fraction, " ".join(where)


def _counts(counts) -> tuple[int, int]:
    return int(counts["kept"]), int(counts["n_in"])


def _sources(manifest: dict, depth: int = 16):
    """(kept, n_in, path) of each dataset up the chain of ``manifest``'s sources, nearest first. A source
    manifest is followed further only while it is still there and is the dataset recorded (config hash)."""
    src = manifest.get("source")
    for _ in range(depth):
        if not isinstance(src, dict):
            return
        try:
            kept, n_in = _counts(src.get("counts"))
        except (KeyError, TypeError, ValueError):
            return
        if n_in <= 0:
            return
        yield kept, n_in, src.get("path")
        try:
            parent = json.loads((Path(str(src.get("path"))) / MANIFEST).read_text())
        except (OSError, ValueError):
            return
        if not isinstance(parent, dict) or parent.get("config_hash") != src.get("config_hash"):
            return
        src = parent.get("source")


def kd_weight_entry(manifest: dict, *, path) -> dict:
    """The manifest's ``kd_weight``: the α ``kdata train`` picks for this dataset, so another trainer can use it."""
    fraction, _ = manifest_fraction(manifest, path=path)
    return {"alpha": alpha_for_fraction(fraction), "kept_fraction": None if fraction is None else round(fraction, 6),
            "rule": RULE}


def resolve_alpha(given: float | None, root: Path | None) -> dict:
    """The α a run uses and why: ``given`` when the user set it, else ``alpha_for_fraction`` of the kept
    fraction recorded in the manifest at ``root``. Returned as the log's ``alpha`` entry."""
    fraction, where = kept_fraction(root)
    if given is not None:
        return {"value": float(given), "source": "given", "kept_fraction": fraction,
                "reason": "set by --alpha"}
    value = alpha_for_fraction(fraction)
    if fraction is None:
        reason = f"kept fraction unknown ({where}): α = {ALPHA_LARGE}"
    else:
        reason = f"kept fraction {fraction:.3f} ({where}) → α = {value} by the rule: {RULE}"
    return {"value": value, "source": "rule", "kept_fraction": fraction, "reason": reason}


def plan_steps(n_rows: int, *, batch_size: int, epochs: int, steps: int) -> tuple[int, int]:
    """(epochs to run, optimiser steps in all): ``epochs`` full passes when ``steps`` is 0, else exactly
    ``steps`` optimiser steps over as many (ceil) passes as they need."""
    per_epoch = max(1, math.ceil(n_rows / batch_size))
    if steps <= 0:
        return epochs, per_epoch * epochs
    return max(1, math.ceil(steps / per_epoch)), steps


class Schedule:
    """The learning-rate factor of each optimiser step: a linear warm-up over the first 5% of the planned
    steps, then cosine decay to zero at the last planned step.

    ``replan(done, remaining)`` changes the number of steps still to come (a KD³ re-selection changed the
    set's size) without a jump: the cosine goes on from where it is and reaches zero after ``remaining``
    more steps. ``total`` is the number of steps planned in all.
    """

    def __init__(self, total: int):
        self.total = max(1, int(total))
        self.warm = max(1, self.total // 20)
        self._at, self._phase, self._left = 0, 0.0, self.total  # the cosine phase (0…1) at step _at

    def phase(self, step: int) -> float:
        return self._phase + (1 - self._phase) * min(step - self._at, self._left) / self._left

    def factor(self, step: int) -> float:
        if self._at == 0:  # a plan never changed: the same arithmetic as ever, so runs stay bit-identical
            angle = math.pi * min(step, self._left) / self._left
        else:
            angle = math.pi * self.phase(step)
        return min(1.0, (step + 1) / self.warm) * 0.5 * (1 + math.cos(angle))

    def replan(self, done: int, remaining: int) -> None:
        if done + remaining == self.total:
            return
        self._phase, self._at, self._left = self.phase(done), done, max(1, int(remaining))
        self.total = done + self._left
