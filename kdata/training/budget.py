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
(``counts.kept / counts.n_in``); without a manifest the rule cannot apply and α is ALPHA_LARGE.

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
    """(kept rows / input rows, where it came from) from the manifest of the curated dataset at ``root``;
    (None, why) when there is no manifest or it holds no counts."""
    if root is None:
        return None, "no manifest.json beside the shards"
    path = Path(root) / "manifest.json"
    try:
        counts = json.loads(path.read_text()).get("counts") or {}
        kept, n_in = int(counts["kept"]), int(counts["n_in"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None, f"{path}: no counts.kept / counts.n_in"
    if n_in <= 0:
        return None, f"{path}: counts.n_in is 0"
    return kept / n_in, f"{path}: counts.kept {kept} / counts.n_in {n_in}"


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
