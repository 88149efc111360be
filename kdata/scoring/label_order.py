"""A teacher whose class names are listed in another order than its logits.

Nothing in a model file says which logit is which class: the sidecar's ``class_names`` do, and a
list typed in another order (``["cat", "dog"]`` for a model trained on ``ImageFolder``'s sorted
``["dog", "cat"]``) loads, scores and selects without an error — while the pool's labels then
look wrong on most rows and the label-noise cut removes good ones. The web labels are noisy, but
not adversarial: when the teacher agrees with them far more often under another one-to-one
reading of its classes than under its own, the order is the likely cause, and the run says so.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

MIN_ROWS = 20  # labelled rows below which agreement says nothing


def label_order_problem(scores: pa.Table, class_names: list[str], *, max_pairs: int = 3) -> str | None:
    """One sentence when the teacher's predictions match the web labels much better under a permutation of
    its classes (the best one-to-one assignment, Hungarian algorithm) than as listed, or worse than chance
    under every reading; else None."""
    if not class_names or not {"label_idx", "teacher_pred"} <= set(scores.column_names):
        return None
    label = scores.column("label_idx").fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    pred = scores.column("teacher_pred").fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    c = len(class_names)
    ok = (label >= 0) & (label < c) & (pred >= 0) & (pred < c)
    n = int(ok.sum())
    if n < max(MIN_ROWS, 2 * c):
        return None
    confusion = np.bincount(label[ok] * c + pred[ok], minlength=c * c).reshape(c, c)
    as_listed = np.trace(confusion) / n
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(-confusion)
    best = confusion[rows, cols].sum() / n
    if not (best >= 0.5 and best >= 2 * as_listed and best - as_listed >= 0.25):
        if as_listed < 1 / c:  # no reading fits, and the listed one is worse than guessing
            return (f"the teacher agrees with the pool's labels on {as_listed:.0%} of {n} labelled rows, below "
                    f"chance for {c} classes ({1 / c:.0%}): check that it is the teacher for this pool and that "
                    "the pool's label names are its class names")
        return None
    moved = [(r, k) for r, k in zip(rows, cols) if r != k]
    moved.sort(key=lambda rk: -confusion[rk])
    pairs = ", ".join(f"'{class_names[r]}' rows mostly predicted '{class_names[k]}'" for r, k in moved[:max_pairs])
    return (f"the teacher agrees with the pool's labels on {as_listed:.0%} of {n} labelled rows, but on {best:.0%} "
            f"with its classes read in another order ({pairs}{', …' if len(moved) > max_pairs else ''}): check that "
            "the class names in its sidecar follow its logits' order")
