"""KD³ dynamic instance selection (Tang et al., ICCV 2023, arXiv 2307.11469).

KD³ selects webly collected instances by the *combined* prediction of teacher and student:
p_c = (p_T + p_S) / 2. An instance is useful when the combined prediction is confident (it is
in-distribution for both networks) and the two networks agree on its class. Score:

    s = max_k p_c(k) · 1[argmax p_T = argmax p_S] + max_k p_c(k) · 0.5 · 1[disagree]

so agreeing, confident instances rank first. The selection is *dynamic*: pass the current
student's predictions (re-score between epochs) and the ranking follows the student.
"""

from __future__ import annotations

import numpy as np

from . import MethodResult, register
from .view import ScoreView


def kd3_score(p_teacher: np.ndarray, p_student: np.ndarray) -> np.ndarray:
    pc = 0.5 * (p_teacher + p_student)
    conf = pc.max(1)
    agree = p_teacher.argmax(1) == p_student.argmax(1)
    return np.where(agree, conf, 0.5 * conf)


@register("kd3", doc="KD³: combined teacher+student confidence, agreeing instances first (arXiv 2307.11469)")
def kd3(view: ScoreView, *, budget, seed, **_) -> MethodResult:
    return MethodResult(score=kd3_score(view.probs("teacher"), view.probs("student")))
