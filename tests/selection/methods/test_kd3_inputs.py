"""``kd3_select`` takes probabilities: logits, or arrays that do not line up, are one KdataError line."""

from __future__ import annotations

import numpy as np
import pytest

from kdata.core.errors import KdataError
from kdata.selection.methods.kd3 import kd3_score, kd3_select


def softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def test_raw_logits_are_refused_naming_the_row():
    """Logits were accepted silently and ranked by their maximum."""
    rng = np.random.default_rng(0)
    zt, zs = rng.normal(size=(20, 5)) * 3, rng.normal(size=(20, 5)) * 3
    assert len(kd3_select(softmax(zt), softmax(zs), 5)) == 5
    with pytest.raises(KdataError, match=r"^kd3_select: p_teacher row 0 is not a probability vector "
                                         r"\(sum .*, min .*\); pass softmax\(logits / T\), not logits$"):
        kd3_select(zt, softmax(zs), 5)
    pos = softmax(zs) * 2  # non-negative but rows sum to 2
    with pytest.raises(KdataError, match=r"^kd3_select: p_student row 0 is not a probability vector \(sum 2,"):
        kd3_select(softmax(zt), pos, 5)
    neg = softmax(zs)
    neg[7] = [1.2, -0.2, 0.0, 0.0, 0.0]  # sums to 1, one negative value
    with pytest.raises(KdataError, match=r"^kd3_select: p_student row 7 is not a probability vector"):
        kd3_select(softmax(zt), neg, 5)
    lowp = softmax(zt).astype(np.float16)  # half-precision probabilities still pass
    assert len(kd3_select(lowp, softmax(zs), 5)) == 5


def test_shape_mismatch_is_a_kdata_error():
    """kd3_select / kd3_score raised ValueError."""
    p = np.full((4, 3), 1 / 3)
    with pytest.raises(KdataError, match=r"^kd3_select: teacher probabilities \(4, 3\) vs student \(4, 2\): "
                                         r"expected two \(N, C\) arrays, rows aligned$"):
        kd3_select(p, p[:, :2] * 1.5, 2)
    with pytest.raises(KdataError, match=r"^kd3: teacher probabilities \(4, 3\) vs student \(3, 3\)"):
        kd3_score(p, p[:3])
