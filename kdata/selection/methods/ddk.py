"""DDK domain mixture (Liu et al., "DDK: Distilling Domain Knowledge for Efficient LLMs", arXiv 2407.16154).

DDK re-weights the distillation data across domains by where the student lags the teacher most.
Per domain i, ℓ_S[i] and ℓ_T[i] are the student's and the teacher's perplexity on that domain
(exp of the mean cross-entropy); the *domain discrepancy factor* is a softmax of their ratio
(the paper's Eq. 1), and between distillation intervals it is updated smoothly (Eq. 2):

    r_0[i]     = exp(ℓ_S[i]/ℓ_T[i]) / Σ_j exp(ℓ_S[j]/ℓ_T[j])                    (Eq. 1)
    ψ_{t+1}[i] = r_t[i] · exp(ℓ_S[i]/ℓ_T[i])                                   (Eq. 2)
    r_{t+1}[i] = α · ψ_{t+1}[i] / Σ_j ψ_{t+1}[j] + (1 − α)/N,   α = 0.5

The constant (1 − α)/N guarantees every domain a floor; ψ carries the previous mixture. A
one-shot selection is the first update from a uniform r_t (then ψ/Σψ is Eq. 1, smoothed towards
uniform); ``previous=`` {domain: r_t} gives the repeated, dynamic use between training intervals.
``info["domains"][d]["perplexity_ratio"]`` reports the ratio ℓ_S/ℓ_T (the exponent of Eq. 2), and
``proportion`` the resulting r_{t+1}. The manifest carries this info, so above ``MAX_LISTED_DOMAINS``
domains (web hosts: 10^5 and more) only that many are listed, those with the largest proportion, and
``other_domains`` sums the rest (``domains_total`` counts them all).

kdata allocates the budget b across the pool's ``domain`` column in proportion r (largest
remainder rounding; a domain with too few rows gives its surplus to the others by r), and
inside each domain keeps the rows with the highest teacher–student KL (where the student has
most to learn).

Losses (the paper uses each domain's validation split; kdata uses the pool's rows of that domain,
the mean of the per-row losses). Classification (no ground truth in a web pool; the teacher is
the target): L_T(i) = −log max p_T(i) (the teacher's loss on its own prediction) and
L_S(i) = −log p_S(teacher_pred(i)) (the student's loss on the teacher's prediction). With
bring-your-own LLM scores, give per-row losses in columns ``teacher_loss``/``student_loss``
(e.g. per-token mean negative log-likelihood) and they are used as is; causal LMs scored by kdata
give ``teacher_nll``/``student_nll`` (mean token NLL per sequence, ``kdata.scoring.text``), used
the same way, with the within-domain order by ``kl_ts`` (or |student_nll − teacher_nll| when the
tokenizers differ, ``kdata.selection.methods.view``).

Defaults: α = 0.5 (``alpha``, the paper's value), r_t uniform (``previous=``), within-domain order
by ``kl_ts``. Rows without a domain form one domain ``"(none)"``. The domain comes from the scores
view's ``domain`` column (bring-your-own scores) or from the pool (the pipeline passes
``domains=`` a sample_id → domain table).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from kdata.core.errors import KdataError
from kdata.selection.methods import MethodResult, register
from kdata.selection.methods.view import ScoreView, by_sample_id

NONE_DOMAIN = "(none)"
MAX_LISTED_DOMAINS = 100  # per-domain entries in ``info`` (the manifest and the card): a bounded size


def domain_proportions(ratio: np.ndarray, *, alpha: float = 0.5, previous: np.ndarray | None = None) -> np.ndarray:
    """DDK's smoothed factor (Eq. 2): r = α·ψ/Σψ + (1 − α)/N with ψ = r_prev·exp(ratio).

    ``ratio`` = ℓ_S/ℓ_T per domain (perplexity ratio); ``previous`` r_prev (uniform by default,
    which makes ψ/Σψ the softmax of Eq. 1).
    """
    ratio = np.asarray(ratio, dtype=np.float64)
    n = len(ratio)
    if n == 0:  # no row reached the method (an empty pool, or a filter before it dropped every row)
        return np.zeros(0)
    prev = np.full(n, 1.0 / n) if previous is None else np.asarray(previous, dtype=np.float64)
    prev = prev / prev.sum()
    log_psi = np.log(np.maximum(prev, 1e-300)) + ratio  # ψ in log space: exp(ratio) may overflow
    psi = np.exp(log_psi - log_psi.max())
    return alpha * psi / psi.sum() + (1 - alpha) / n


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
        d = by_sample_id(view.sample_ids, domains, "domain")
    else:
        raise KdataError("ddk: needs a 'domain' column (in the pool or the --scores file)")
    if len(d) and all(v is None for v in d):  # a pool reader's all-null column is no domain either
        raise KdataError("ddk: needs a 'domain' column (in the pool or the --scores file); every row's domain "
                         "is empty")
    return np.array([NONE_DOMAIN if v is None else str(v) for v in d], dtype=object)


def _previous(previous: dict, names) -> np.ndarray:
    """r_prev per domain from ``previous`` {domain: r}; the mass it leaves (a manifest lists at most
    ``MAX_LISTED_DOMAINS`` domains and sums the rest) is shared evenly by the domains it does not name."""
    prev = np.array([float(previous.get(str(d), 0.0)) for d in names])
    unnamed = np.array([str(d) not in previous for d in names])
    left = 1.0 - float(sum(float(v) for v in previous.values()))
    if unnamed.any() and left > 0:
        prev[unnamed] = left / unnamed.sum()
    return prev


@register("ddk", needs=("domains",), doc="DDK: budget split over domains by the smoothed softmax of the "
                                      "student/teacher perplexity ratio (arXiv 2407.16154)")
def ddk(view: ScoreView, *, budget, seed, alive=None, alpha: float = 0.5, previous: dict | None = None,
        domains: pa.Table | None = None, **_) -> MethodResult:
    n = len(view)
    rows = np.arange(n) if alive is None else np.flatnonzero(alive)
    dom = _domains(view, domains)
    if view.has("teacher_loss") and view.has("student_loss"):
        lt = view.col("teacher_loss").astype(np.float64)
        ls = view.col("student_loss").astype(np.float64)
    elif view.has("teacher_nll") and view.has("student_nll"):  # causal-LM text: mean token NLL per sequence
        lt = view.col("teacher_nll").astype(np.float64)
        ls = view.col("student_nll").astype(np.float64)
        ls = np.where(np.isnan(ls), lt, ls)  # a text the student's tokenizer gives < 2 tokens: no gap
    else:
        lt = -np.log(np.maximum(view.col("teacher_conf").astype(np.float64), 1e-12))
        pred = view.col("teacher_pred").astype(np.int64)
        ls = (-view.col("student_pred_logprob").astype(np.float64) if view.exact("student_pred_logprob")
              else -np.log(np.maximum(view.prob_at("student", pred), 1e-12)))
    within = view.col("kl_ts").astype(np.float64) if view.has("kl_ts") else ls - lt
    if np.isnan(within).all():  # text with different tokenizers: no kl_ts, rank by the loss gap instead
        within = ls - lt
    names, inv = np.unique(dom[rows], return_inverse=True)
    cnt = np.bincount(inv, minlength=len(names)).astype(np.float64)
    mean_t = np.bincount(inv, weights=lt[rows], minlength=len(names)) / np.maximum(cnt, 1)
    mean_s = np.bincount(inv, weights=ls[rows], minlength=len(names)) / np.maximum(cnt, 1)
    ratio = np.exp(mean_s - mean_t)  # ℓ_S/ℓ_T: the ratio of the perplexities exp(mean loss)
    prev = None if previous is None else _previous(previous, names)
    if prev is not None and prev.sum() <= 0:
        prev = None
    r = domain_proportions(ratio, alpha=alpha, previous=prev)
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
    return MethodResult(score=score, info={**domain_info(names, ratio, r, quota, taken), "alpha": alpha})


def domain_info(names, ratio, r, quota, taken, *, limit: int = MAX_LISTED_DOMAINS) -> dict:
    """``{"domains": {name: {perplexity_ratio, proportion, quota, kept}}}`` for every domain, or above
    ``limit`` domains for the ``limit`` with the largest proportion (ties: by name), plus
    ``other_domains`` (the rest: how many, their summed proportion, quota and kept rows, and the
    range of their perplexity ratios) and ``domains_total``: one manifest entry per web host would
    weigh hundreds of MB, read back by every ``kdata inspect`` and ``kdata card``."""
    listed = np.arange(len(names))
    if len(names) > limit:
        listed = np.sort(np.lexsort((np.arange(len(names)), -np.asarray(r)))[:limit])
    info = {"domains": {str(names[i]): {"perplexity_ratio": float(ratio[i]), "proportion": float(r[i]),
                                        "quota": int(quota[i]), "kept": int(taken[i])} for i in listed}}
    if len(listed) < len(names):
        rest = np.setdiff1d(np.arange(len(names)), listed)
        info["domains_total"] = len(names)
        info["other_domains"] = {"count": len(rest), "proportion": float(np.sum(r[rest])),
                                 "quota": int(quota[rest].sum()), "kept": int(taken[rest].sum()),
                                 "perplexity_ratio": {"min": float(ratio[rest].min()), "max": float(ratio[rest].max())}}
    return info
