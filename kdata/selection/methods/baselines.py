"""Honest baselines every method is compared with.

* ``random`` — keeps the rows with the smallest permanent random number (``kdata.selection.prn``, a
  seeded hash of ``sample_id``): invariant to row order, and within balance groups the same rule;
* ``teacher_confidence`` — max_k p_T(k), highest first;
* ``student_entropy`` — H(p_S), highest first (uncertainty sampling);
* ``disagreement`` — KL(p_T ‖ p_S) at the scoring temperature, highest first.

On causal LMs the view derives these columns from sequence statistics
(``kdata.selection.methods.view``): teacher confidence exp(−teacher_nll), student entropy the
student's mean token cross-entropy ``student_nll``, disagreement ``kl_ts`` (|student_nll − teacher_nll|
when the tokenizers differ).
"""

from __future__ import annotations

import numpy as np

from kdata.selection.methods import MethodResult, register
from kdata.selection.methods.view import ScoreView


@register("random", doc="uniformly random under the budget (seeded)")
def random_(view: ScoreView, *, budget: int | None, seed: int, **_) -> MethodResult:
    return MethodResult(score=1.0 - view.prn(seed))  # top-b by score = the b smallest PRNs


@register("teacher_confidence", doc="highest teacher max-probability first")
def teacher_confidence(view: ScoreView, *, budget, seed, **_) -> MethodResult:
    return MethodResult(score=view.col("teacher_conf").astype(np.float64))


@register("student_entropy", doc="highest student entropy first (uncertainty sampling)")
def student_entropy(view: ScoreView, *, budget, seed, **_) -> MethodResult:
    return MethodResult(score=view.col("student_entropy").astype(np.float64))


@register("disagreement", doc="highest KL(teacher || student) first")
def disagreement(view: ScoreView, *, budget, seed, **_) -> MethodResult:
    return MethodResult(score=view.col("kl_ts").astype(np.float64))
