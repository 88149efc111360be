"""``coverage``: the default recipe's sampler — cut a small likely-junk tail, then sample every stratum.

After CCS (Zheng et al., "Coverage-centric Coreset Selection for High Pruning Rates", ICLR 2023,
arXiv 2210.15809).

A *sampler* (``kind="sampler"``) runs after the filters and after dedup (``selection.select``), on
the rows still alive, and picks its own ``budget`` rows. Steps (all recorded in ``info``):

1. **Tail cut** (``kdata.selection.tail``): the labelled rows whose label the teacher believes least
   (Confident Learning's self-confidence), then the least typical of the rest by a label-free
   outlier score (CCS's hardest-first cut, capped by the label-noise estimate and the teacher's
   typical uncertainty). Never below the budget.
2. **Strata** = teacher-predicted class × equal-width difficulty bins over the remaining rows
   (CCS bins difficulty into 50 equal-width bins; kdata uses min(50, max(1, n / (20 C))) bins per
   class, about 20 rows per stratum). Difficulty = log(1 + ``kl_ts``) (else student entropy).
3. **Allocation**: when the budget allows, every non-empty stratum gets one row (coverage: CCS
   fills the smallest bins first); the rest is spread over the strata in proportion to their size
   times a weight, by water-filling (each stratum capped at its size). CCS spreads it *equally*
   over the bins; on a junk-heavy pool that over-samples the sparse, hardest bins where junk and
   mislabelled rows gather (digits-web at 10% kept: 0.27 junk + shifted vs 0.21 proportional).
   Proportional allocation keeps the pool's composition, as random sampling does — the strong
   baseline with soft labels (Ben-Baruch et al., ICML 2025) — minus the tail and tilted by
   difficulty. Weights follow Sorscher et al. (NeurIPS 2022,
   "Beyond neural scaling laws": keep easy examples when the kept set is small, hard ones when it
   is large): w_j = exp(γ (d_j − ½)) for difficulty-bin centre d_j ∈ (0, 1), γ = 2 (2r − 1) —
   easier bins favoured below r = ½ (5× at r = 0.1), harder above, flat at ½. No per-pool tuning.
4. **Inside a stratum**: the rows with the smallest permanent random numbers (``kdata.selection.prn``),
   so small score changes move few rows.

Scores: chosen rows 1 + typicality, others typicality, tail rows typicality − 1, where typicality is
1 − the outlier percentile (the mean of the label-disagreement and label-free ranks where a row has
both), so the kept rows rank most-typical first. Tail rows are rejected as ``coverage_tail``.

Causal LMs have no predicted class: the strata are **domain × difficulty** (the pool's ``domain``
column, passed as ``domains=``; one stratum row when the pool has none), the tail signals and the
difficulty are the sequence-level columns the view derives (teacher confidence exp(−teacher_nll),
``kl_ts`` or |student_nll − teacher_nll|; ``kdata.selection.methods.view``).
"""

from __future__ import annotations

import numpy as np

from kdata.selection.methods import MethodResult, register
from kdata.selection.methods.view import ScoreView, by_sample_id
from kdata.selection.tail import cut_tail

MAX_BINS, ROWS_PER_STRATUM = 50, 20


def bias_gamma(r: float) -> float:
    """γ = 2 (2r − 1): negative (favour easy bins) for small budgets, positive for large ones."""
    return 2.0 * (2.0 * r - 1.0)


def n_bins_for(n: int, num_classes: int) -> int:
    """Difficulty bins per class: about ``ROWS_PER_STRATUM`` rows per stratum, 1 to 50 (CCS)."""
    return int(min(MAX_BINS, max(1, round(n / (ROWS_PER_STRATUM * max(num_classes, 1))))))


def difficulty(view: ScoreView, rows: np.ndarray) -> tuple[np.ndarray, str]:
    """The difficulty the bins are cut on: log(1 + ``kl_ts``) (KL is heavy-tailed: equal-width bins
    on the raw value would put nearly every row in the first bin), else student entropy."""
    if view.has("kl_ts"):
        kl = np.nan_to_num(view.col("kl_ts")[rows].astype(np.float64), nan=0.0)
        return np.log1p(np.clip(kl, 0.0, None)), "log1p_kl_ts"
    if view.has("student_entropy"):
        return np.nan_to_num(view.col("student_entropy")[rows].astype(np.float64), nan=0.0), "student_entropy"
    return np.zeros(len(rows)), "none"


def allocate(sizes: np.ndarray, weights: np.ndarray, budget: int) -> np.ndarray:
    """Quota per stratum: one each when the budget allows, the rest by weighted water-filling
    (strata in increasing size / weight, each capped at its size), rounding by largest remainder."""
    sizes = np.asarray(sizes, dtype=np.int64)
    w = np.asarray(weights, dtype=np.float64)
    quota = np.zeros(len(sizes), dtype=np.int64)
    budget = int(min(budget, sizes.sum()))
    nonempty = sizes > 0
    if budget >= nonempty.sum():
        quota[nonempty] = 1
    left = budget - int(quota.sum())
    room = sizes - quota
    share = np.zeros(len(sizes))
    order = np.lexsort((np.arange(len(sizes)), room / np.maximum(w, 1e-12)))
    order = order[room[order] > 0]
    w_left, pool = float(w[order].sum()), float(left)
    for i in order:  # the small strata (relative to their weight) are filled first
        share[i] = min(float(room[i]), pool * w[i] / w_left if w_left > 0 else 0.0)
        pool -= share[i]
        w_left -= w[i]
    add = np.floor(share).astype(np.int64)
    left -= int(add.sum())
    quota += add
    rest = share - add
    while left > 0:  # largest remainders first, then any stratum with room
        cand = np.flatnonzero(quota < sizes)
        if not len(cand):
            break
        pick = cand[np.lexsort((cand, -w[cand], -rest[cand]))][:left]
        quota[pick] += 1
        rest[pick] = 0.0
        left -= len(pick)
    return quota


def pick_in_strata(strata: np.ndarray, quota: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Positions of the ``quota[s]`` rows with the smallest ``u`` inside each stratum ``s``."""
    order = np.lexsort((np.arange(len(u)), u, strata))
    s = strata[order]
    start = np.searchsorted(s, s, side="left")
    pos = np.arange(len(s)) - start
    return np.sort(order[pos < quota[s]])


def strata_groups(view: ScoreView, rows: np.ndarray, *, domains=None) -> tuple[np.ndarray, int, str]:
    """(group per row, number of groups, name): the teacher-predicted class, or on causal LMs the
    domain (``domains``: a sample_id → domain table), which the view has no class for."""
    if not view.sequence_level:
        pred = view.col("teacher_pred")[rows].astype(np.int64) if view.has("teacher_pred") else np.zeros(len(rows), np.int64)
        return pred, view.num_classes, "teacher_pred"
    if view.has("domain"):
        dom = view.col("domain")[rows]
    elif domains is not None:
        dom = by_sample_id(view.sample_ids[rows], domains, "domain")
    else:
        return np.zeros(len(rows), np.int64), 1, "none"
    names, inv = np.unique(np.array(["" if d is None else str(d) for d in dom], dtype=object), return_inverse=True)
    return inv.astype(np.int64), max(len(names), 1), "domain"


def stratify(view: ScoreView, rows: np.ndarray, budget: int, *, u: np.ndarray, bins: int | None,
             num_classes: int, r: float, domains=None) -> tuple[np.ndarray, dict]:
    """Positions (into ``rows``) of the stratified picks, and the allocation's info (``r``: kept ratio)."""
    n = len(rows)
    d, d_name = difficulty(view, rows)
    pred, n_groups, g_name = strata_groups(view, rows, domains=domains)
    if g_name != "teacher_pred":
        num_classes = n_groups
    nb = n_bins_for(n, num_classes) if bins is None else int(bins)
    lo, hi = (float(d.min()), float(d.max())) if n else (0.0, 0.0)
    width = (hi - lo) / nb if hi > lo else 1.0
    b_idx = np.clip(np.floor((d - lo) / width), 0, nb - 1).astype(np.int64)
    classes, cls_idx = np.unique(pred, return_inverse=True)
    strata = cls_idx * nb + b_idx
    sizes = np.bincount(strata, minlength=len(classes) * nb)
    gamma = bias_gamma(r)
    centre = (np.arange(nb) + 0.5) / nb
    tilt = np.tile(np.exp(gamma * (centre - 0.5)), len(classes))
    quota = allocate(sizes, tilt * sizes, budget)  # proportional to size, tilted by difficulty
    picks = pick_in_strata(strata, quota, u)
    info = {"difficulty": d_name, "bins_per_class": nb,
            **({} if g_name == "teacher_pred" else {"strata": f"{g_name} x difficulty"}), "bin_range": [lo, hi], "classes": len(classes),
            "strata_nonempty": int((sizes > 0).sum()), "strata_picked": int((quota > 0).sum()),
            "allocation": "proportional to stratum size x w", "bias_gamma": gamma,
            "bias_rule": "gamma = 2 (2r - 1); w = exp(gamma (bin centre - 1/2))",
            "picks_per_bin": np.bincount(b_idx[picks], minlength=nb).tolist()}
    return picks, info


@register("coverage", kind="sampler", needs=("lm_domains",),
          doc="default recipe sampler: cut a small likely-junk tail, then sample every predicted-class "
              "(causal-LM text: domain) x difficulty stratum by permanent random numbers (arXiv 2210.15809)")
def coverage(view: ScoreView, *, budget, seed, alive=None, deduped: bool | None = None, tail: float | None = None,
             bins: int | None = None, domains=None, **_) -> MethodResult:
    n = len(view)
    rows = np.arange(n) if alive is None else np.flatnonzero(alive)
    b = int(min(budget, len(rows)))
    typical = np.full(n, np.nan)  # rows an earlier stage removed (dedup, filters) were never ranked here
    keep = np.ones(n, dtype=bool) if alive is None else np.asarray(alive, dtype=bool).copy()
    info: dict = {"steps": ["dedup", "tail_cut", "stratified_prn"], "seed": seed, "budget": b,
                  "candidates": len(rows)}
    skipped = [] if deduped or deduped is None else ["dedup (no pool payload to compare, or --dedup none)"]
    if not len(rows):
        return MethodResult(score=typical, keep=keep, info={**info, "skipped": skipped})
    tail_keep, out_score, tail_info = cut_tail(view, rows, b, tail=tail)
    skipped += tail_info.pop("skipped")
    typical[rows] = 1.0 - out_score - (~tail_keep)  # tail rows below every candidate left
    keep[rows[~tail_keep]] = False
    left = rows[tail_keep]
    u = view.prn(seed)[left]
    picks, strat_info = stratify(view, left, b, u=u, bins=bins, num_classes=view.num_classes,
                                 r=b / len(rows), domains=domains)
    score = typical.copy()
    score[left[picks]] += 1.0
    info.update(tail_info)
    info.update(strat_info)
    info["skipped"] = skipped
    return MethodResult(score=score, keep=keep, reason="coverage_tail", info=info)
