"""DDK domain mixture (Liu et al., "DDK: Distilling Domain Knowledge for Efficient LLMs", arXiv 2407.16154).

DDK re-weights the distillation data across domains by where the student lags the teacher most:
per domain d, the discrepancy ψ_d is the ratio of the student's loss to the teacher's loss on that
domain; the sampling proportions are a softmax of ψ, smoothed towards the previous proportions
so that the mixture does not oscillate:

    ψ_d = mean_{i∈d} L_S(i) / mean_{i∈d} L_T(i)
    r_d ← α · softmax(ψ)_d + (1 − α) · r_d^prev        (r^prev = uniform 1/D at the start)

kdata allocates the budget b across the pool's ``domain`` column in proportion r (largest
remainder rounding; a domain with too few rows gives its surplus to the others by r), and
inside each domain keeps the rows with the highest teacher–student KL (where the student has
most to learn).

Losses for classification (no ground truth in a web pool; the teacher is the target):
L_T(i) = −log max p_T(i) (the teacher's loss on its own prediction) and
L_S(i) = −log p_S(teacher_pred(i)) (the student's loss on the teacher's prediction). With
bring-your-own LLM scores, give per-row losses in columns ``teacher_loss``/``student_loss``
(e.g. per-token mean negative log-likelihood) and they are used as is.

Defaults: α = 0.5 (``alpha``), r^prev uniform (``previous=`` {domain: proportion} for the
dynamic, repeated use), within-domain order by ``kl_ts``. Rows without a domain form one
domain ``"(none)"``. The domain comes from the scores view's ``domain`` column (bring-your-own
scores) or from the pool (the pipeline passes ``domains=`` a sample_id → domain table).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from kdata.core.errors import KdataError
from kdata.selection.methods import MethodResult, register
from kdata.selection.methods.view import ScoreView

NONE_DOMAIN = "(none)"


def domain_proportions(psi: np.ndarray, *, alpha: float = 0.5, previous: np.ndarray | None = None) -> np.ndarray:
    """r = α·softmax(ψ) + (1 − α)·r_prev (uniform r_prev by default)."""
    psi = np.asarray(psi, dtype=np.float64)
    e = np.exp(psi - psi.max())
    soft = e / e.sum()
    prev = np.full(len(psi), 1.0 / len(psi)) if previous is None else np.asarray(previous, dtype=np.float64)
    return alpha * soft + (1 - alpha) * prev / prev.sum()


def allocate(budget: int, proportions: np.ndarray, capacity: np.ndarray) -> np.ndarray:
    """Integer quotas summing to min(budget, Σ capacity), ≈ budget·r, never above capacity."""
    capacity = np.asarray(capacity, dtype=np.int64)
    total = int(min(budget, capacity.sum()))
    quota = np.zeros(len(capacity), dtype=np.int64)
    r = np.asarray(proportions, dtype=np.float64).copy()
    open_ = capacity > 0
    while quota.sum() < total and open_.any():
        left = total - quota.sum()
        w = np.where(open_, r, 0.0)
        w = w / w.sum() if w.sum() > 0 else open_ / open_.sum()
        want = w * left
        add = np.floor(want).astype(np.int64)
        rem = left - add.sum()
        if rem > 0:  # largest remainders (ties: lower index)
            frac = np.where(open_, want - add, -1.0)
            add[np.lexsort((np.arange(len(frac)), -frac))[:rem]] += 1
        add = np.minimum(add, capacity - quota)
        quota += add
        open_ = quota < capacity
        if add.sum() == 0:
            break
    return quota


def _domains(view: ScoreView, domains: pa.Table | None) -> np.ndarray:
    if view.has("domain"):
        d = view.col("domain")
    elif domains is not None:
        pos = dict(zip(domains.column("sample_id").to_pylist(), domains.column("domain").to_pylist()))
        d = np.array([pos.get(s) for s in view.sample_ids], dtype=object)
    else:
        raise KdataError("ddk: needs a 'domain' column (in the pool or the --scores file)")
    return np.array([NONE_DOMAIN if v is None else str(v) for v in d], dtype=object)


@register("ddk", needs=("domains",), doc="DDK: budget split over domains by softmax of student/teacher loss ratio (arXiv 2407.16154)")
def ddk(view: ScoreView, *, budget, seed, alive=None, alpha: float = 0.5, previous: dict | None = None,
        domains: pa.Table | None = None, **_) -> MethodResult:
    n = len(view)
    rows = np.arange(n) if alive is None else np.flatnonzero(alive)
    dom = _domains(view, domains)
    if view.has("teacher_loss") and view.has("student_loss"):
        lt = view.col("teacher_loss").astype(np.float64)
        ls = view.col("student_loss").astype(np.float64)
    else:
        lt = -np.log(np.maximum(view.col("teacher_conf").astype(np.float64), 1e-12))
        pred = view.col("teacher_pred").astype(np.int64)
        ls = -np.log(np.maximum(view.prob_at("student", pred), 1e-12))
    within = view.col("kl_ts").astype(np.float64) if view.has("kl_ts") else ls - lt
    names, inv = np.unique(dom[rows], return_inverse=True)
    cnt = np.bincount(inv, minlength=len(names)).astype(np.float64)
    mean_t = np.bincount(inv, weights=lt[rows], minlength=len(names)) / np.maximum(cnt, 1)
    mean_s = np.bincount(inv, weights=ls[rows], minlength=len(names)) / np.maximum(cnt, 1)
    psi = mean_s / np.maximum(mean_t, 1e-6)
    prev = None if previous is None else np.array([float(previous.get(d, 0.0)) for d in names])
    if prev is not None and prev.sum() <= 0:
        prev = None
    r = domain_proportions(psi, alpha=alpha, previous=prev)
    quota = allocate(int(min(budget, len(rows))), r, cnt.astype(np.int64))
    score = np.full(n, -np.inf)
    rank_key = np.nan_to_num(within[rows], nan=-np.inf)
    tie = view.row_uniform(seed, "ddk")[rows]
    order = np.lexsort((tie, -rank_key))  # best first over all alive rows
    taken = np.zeros(len(names), dtype=np.int64)
    inv_o = inv[order]
    # position of each row within its domain's ranking (stable sort by domain keeps the rank order)
    by_dom = np.argsort(inv_o, kind="stable")
    starts = np.concatenate([[0], np.cumsum(np.bincount(inv_o, minlength=len(names)))[:-1]])
    pos_in_dom = np.empty(len(order), dtype=np.int64)
    pos_in_dom[by_dom] = np.arange(len(order)) - starts[inv_o[by_dom]]
    chosen = pos_in_dom < quota[inv_o]
    # chosen rows score in (1, 2] by their within-domain key rank; the rest below 1
    ranks = np.arange(len(order), dtype=np.float64)
    score[rows[order]] = np.where(chosen, 2.0 - ranks / max(len(order), 1), 1.0 - ranks / max(len(order), 1) - 1e-9)
    taken = np.bincount(inv_o[chosen], minlength=len(names))
    info = {"domains": {str(d): {"psi": float(p), "proportion": float(x), "quota": int(q), "kept": int(k)}
                        for d, p, x, q, k in zip(names, psi, r, quota, taken)}, "alpha": alpha}
    return MethodResult(score=score, info=info)
