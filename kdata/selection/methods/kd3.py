"""KD³ dynamic instance selection (Tang, Chen, Niu, Sugiyama, Gong, ICCV 2023, arXiv 2307.11469).

KD³ ("Knowledge Distillation between Different Distributions") distils from webly collected
images whose distribution differs from the teacher's training data. Its first component selects,
*dynamically during training*, the web instances on which the **combined prediction of teacher
and student** is confident: such instances are in-distribution for both networks, and the two
networks agree on them, so their soft labels are trustworthy. The paper's other two components
(weighted feature/classifier alignment and the MixDistribution contrastive block) belong to the
training loss, not to data selection, and are out of scope here.

Formula (per instance x, C classes, temperature T of the scores):

    p_c(x) = λ · p_T(x) + (1 − λ) · p_S(x)          combined prediction, λ = 0.5 (equal weight)
    s(x)   = max_k p_c(x)_k                          confidence of the combined prediction
    keep   = top-``budget`` instances by s; optionally also s ≥ τ (``threshold``)

Agreement is built in: when teacher and student predict different classes the combined maximum
is at most ≈ (max p_T + max p_S)/2 spread over two classes, so disagreeing instances fall below
agreeing ones of the same confidence. Instances whose confidence is below ``threshold`` are
rejected as ``kd3_low_confidence``; the rest compete for the budget (``kd3_over_budget``).

Dynamic selection: the paper re-selects as the student learns. ``kd3_select`` is a plain
function over probability arrays that the trainer calls between epochs with the *current*
student's predictions; the registry method uses the student predictions in the scores table.

Only the paper's abstract was accessible while writing this ("select useful training instances
... according to the combined predictions of teacher network and student network", dynamically).
The equal-weight average as the combination and its maximum as the usefulness score are kdata's
reading of it: the average is the natural combination of two probability vectors, its maximum
is high exactly when both networks are confident *and* agree, and it needs no extra parameter.

Defaults: λ = 0.5 (kdata's reading: equal weight for the two networks' predictions),
threshold = None (the budget alone decides; the paper's threshold is a confidence cut that the
budget makes unnecessary), chunked over rows so memory is O(chunk × C).

Causal LMs (sequence-level statistics, ``kdata.selection.methods.view``): the confidence of a
network on a text is its geometric-mean token probability exp(−NLL), so the combined confidence is
s(x) = λ · exp(−teacher_nll) + (1 − λ) · exp(−student_nll): high exactly when both networks find the
text predictable (in-distribution for both), low for junk or text only the teacher can model.
"""

from __future__ import annotations

import numpy as np

from kdata.core.errors import KdataError
from kdata.selection.methods import MethodResult, register
from kdata.selection.methods.view import ScoreView

REASON_LOW = "kd3_low_confidence"


def kd3_score(p_teacher: np.ndarray, p_student: np.ndarray, *, weight: float = 0.5,
              chunk: int = 65_536) -> np.ndarray:
    """Confidence of the combined prediction, max_k (λ p_T + (1 − λ) p_S)_k, per row (chunked)."""
    p_teacher = np.asarray(p_teacher)
    p_student = np.asarray(p_student)
    if p_teacher.shape != p_student.shape or p_teacher.ndim != 2:
        raise KdataError(f"kd3: teacher probabilities {p_teacher.shape} vs student {p_student.shape}: expected two "
                         "(N, C) arrays, rows aligned")
    out = np.empty(len(p_teacher), dtype=np.float64)
    for i in range(0, len(p_teacher), chunk):
        pc = weight * p_teacher[i:i + chunk].astype(np.float64) + (1 - weight) * p_student[i:i + chunk]
        out[i:i + chunk] = pc.max(1)
    return out


def check_probabilities(p: np.ndarray, *, name: str, tol: float = 1e-2, chunk: int = 65_536) -> None:
    """One KdataError line unless every row of ``p`` is a probability vector (finite, ≥ 0, sums to 1
    within ``tol``): raw logits passed for probabilities would rank rows by a meaningless maximum."""
    for i in range(0, len(p), chunk):
        block = np.asarray(p[i:i + chunk], dtype=np.float64)
        sums = block.sum(1)
        bad = ~np.isfinite(sums) | (np.abs(sums - 1) > tol) | (block.min(1, initial=0.0) < -1e-6)
        if bad.any():
            r = int(np.argmax(bad))
            raise KdataError(f"kd3_select: {name} row {i + r} is not a probability vector (sum {sums[r]:.4g}, "
                             f"min {block[r].min(initial=0.0):.4g}); pass softmax(logits / T), not logits")


def kd3_select(p_teacher: np.ndarray, p_student: np.ndarray, budget: int, *, weight: float = 0.5,
               threshold: float | None = None, seed: int = 0) -> np.ndarray:
    """Indices (best first) of the ``budget`` instances KD³ keeps for the next epoch.

    Call between epochs with the current student's probabilities (rows aligned with the
    teacher's); ties are broken by a seeded random key. With ``threshold`` fewer rows may return.
    ``budget`` is a row count, an integer ≥ 0; arrays of other shapes, or rows that are not probability
    vectors (e.g. raw logits), are one KdataError line.
    """
    from kdata.selection.ranking import check_count, top_k

    budget = check_count(budget, what="kd3_select: budget")
    p_teacher, p_student = np.asarray(p_teacher), np.asarray(p_student)
    if p_teacher.shape != p_student.shape or p_teacher.ndim != 2:
        raise KdataError(f"kd3_select: teacher probabilities {p_teacher.shape} vs student {p_student.shape}: "
                         "expected two (N, C) arrays, rows aligned")
    check_probabilities(p_teacher, name="p_teacher")
    check_probabilities(p_student, name="p_student")
    s = kd3_score(p_teacher, p_student, weight=weight)
    cand = np.arange(len(s)) if threshold is None else np.flatnonzero(s >= threshold)
    return cand[top_k(s[cand], budget, seed=seed)]


@register("kd3", doc="KD³: confidence of the combined teacher+student prediction (arXiv 2307.11469)")
def kd3(view: ScoreView, *, budget, seed, weight: float = 0.5, threshold: float | None = None,
        **_) -> MethodResult:
    if view.sequence_level:  # causal LMs: geometric-mean token probabilities (module docstring)
        s = weight * view.col("teacher_conf").astype(np.float64) + \
            (1 - weight) * view.col("student_conf").astype(np.float64)
    elif weight == 0.5 and view.exact("kd3_half"):  # kept top-k only: the exact score stored at scoring
        s = view.col("kd3_half").astype(np.float64)
    elif view.topk_dense():
        s = kd3_score_topk(view, weight=weight)
    else:
        s = _kd3_dense(view, weight)
    if threshold is None:
        return MethodResult(score=s, info={"weight": weight})
    keep = s >= float(threshold)
    return MethodResult(score=s, keep=keep, reason=REASON_LOW,
                        info={"weight": weight, "threshold": float(threshold), "below_threshold": int((~keep).sum())})


def kd3_score_topk(view: ScoreView, *, weight: float = 0.5) -> np.ndarray:
    """The same score from top-k soft labels in O(N·k): the combined maximum lies on a class in
    either top-k (or, if all mass is spread, on any other class at the spread value)."""
    cand = np.concatenate([view.col("teacher_topk_idx"), view.col("student_topk_idx")], axis=1).astype(np.int64)
    best = np.full(len(view), -np.inf)
    for j in range(cand.shape[1]):
        c = cand[:, j]
        best = np.maximum(best, weight * view.prob_at("teacher", c) + (1 - weight) * view.prob_at("student", c))
    free_t = np.clip(1 - view.col("teacher_topk_prob").astype(np.float64).sum(1), 0, None)
    free_s = np.clip(1 - view.col("student_topk_prob").astype(np.float64).sum(1), 0, None)
    k = view.col("teacher_topk_idx").shape[1]
    other = (weight * free_t + (1 - weight) * free_s) / max(view.num_classes - k, 1)
    return np.maximum(best, other)


def _kd3_dense(view: ScoreView, weight: float) -> np.ndarray:
    s = np.empty(len(view), dtype=np.float64)
    chunks_t = view.prob_chunks("teacher")
    chunks_s = view.prob_chunks("student")
    for (rows, pt), (_, ps) in zip(chunks_t, chunks_s):
        s[rows] = kd3_score(pt, ps, weight=weight)
    return s
