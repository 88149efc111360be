"""``coverage``: the default recipe's sampler — cut a small likely-junk tail, then sample every stratum.

A *sampler* (``kind="sampler"``) runs after the filters and after dedup (``selection.select``), on
the rows still alive, and picks its own ``budget`` rows. Steps (all recorded in ``info``):

1. **Tail cut**, in two stages (all counts and fractions recorded).

   a. *Label issues* (Confident Learning, Northcutt, Jiang & Chuang, JAIR 2021). On rows that carry
      a label (web label, folder name) the teacher's disagreement with it, ``1 − p_T(label)``, is
      CL's *self-confidence* label-quality score and what CLIP-score filtering of web data ranks by
      (DataComp, Gadre et al., NeurIPS 2023). It finds junk, shifted and mislabelled rows alike
      (``benchmarks/tail_signals.py``: AUROC 0.89, 0.75 and 0.74 for the three kinds together on
      the quality pools digits, openclipart and icons, against 0.76, 0.62 and 0.65 for the label-free
      score below, which finds no mislabelled rows at all: 0.47–0.51). The labelled rows the teacher believes least are cut, a share
      clip(η̂, 0, 0.5) of them, with η̂ = mean(max p_T − p_T(label)): the expected gap between the
      teacher's belief and the given label, which for a calibrated teacher is the rate at which it
      rejects the label beyond its own uncertainty (a simple stand-in for CL's noise-rate estimate;
      it errs low when the teacher is unsure, high when it is wrong on shifted rows).
   b. *The hardest tail* (CCS, Zheng et al., ICLR 2023: prune the hardest β first; their CIFAR-10
      settings cut 30% at 10% kept and nothing at 50%). Of the rows left, a share
      clip(0.8 − r, 0.05, 0.3) (r = budget / candidates) with the highest label-free outlier score
      is cut — 30% for every budget up to half the candidates, shrinking to 5% as the budget nears
      all of them — but never more than clip(η̂, 0, 0.3) of stage a's label-noise estimate, nor
      than clip(2 ε̃′, 0, 0.3) for the teacher's typical uncertainty ε̃′ = median(1 − max p_T) on the
      rows stage a left — the median, not the mean, which the odd rows this stage is about inflate
      (builtin:digits-web: mean 0.129, median 0.035; with the mean the default tied with random on
      the ``digits2`` quality pool at 30% with equal steps, and cut 93 hard, correct rows of the
      clean digits pool of ``benchmarks/quality_clean.py``): a teacher sure of nearly all of them
      teaches through its soft labels even on
      odd-looking rows (distillation transfers a teacher's function outside its training
      distribution too: Beyer et al., CVPR 2022), so cutting them costs good, hard rows (without this
      cap the default lost to random with equal steps on the ``digits2`` quality pool: teacher 0.99,
      student 0.50; a factor 1 cut too little on icons, where the teacher is weak). On
      clean CIFAR the hardest rows are informative; on a web pool they are mostly junk and shifted
      rows whatever the budget: at 50% kept, CCS's smaller cut (0.6 − r, 10%) kept more shifted rows
      than random on the openclipart and icons pools of ``benchmarks/quality.py`` and lost to random
      there with equal epochs. How much of a pool is junk shows in η̂ too (junk and shifted rows
      carry labels the teacher rejects), and a pool whose labels the teacher confirms is one where
      the hardest rows are informative again; without the cap the stage would cut 30% of a clean
      pool's hardest, correct rows (``benchmarks/quality_clean.py`` measures the recipe there).
      The outlier score: the mean of the percentile ranks of low teacher max-probability
      ``1 − max p_T``, the teacher–student KL ``kl_ts`` (CCS's "hardest") and the cosine distance of
      the teacher embedding to the centroid of the teacher-predicted class (centroid over that
      class's more confident half; needs an ``embedding`` column). Without any labelled row, stage a
      is skipped and this stage cuts max(clip(0.8 − r, 0.05, 0.3),
      clip(ε̂, 0.05, 0.3)) with ε̂ = mean(1 − max p_T), the teacher's expected error rate (the
      estimate RAD uses), so a teacher that errs on many rows cuts at least that share.

   A signal whose column is missing (bring-your-own ``--scores``) is skipped and recorded in
   ``info["skipped"]``; with no signal at all no tail is cut. Energy −log Σ exp z_T was measured and
   left out: on builtin:digits-web it does not separate junk (AUC ≈ 0.5). The two stages together
   never leave fewer candidates than the budget.
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

from kdata.core.vectors import group_cosine
from kdata.selection.methods import MethodResult, register
from kdata.selection.methods.view import ScoreView

TAIL_MIN, TAIL_MAX, TAIL_AT_ZERO = 0.05, 0.3, 0.8
LABEL_TAIL_MAX = 0.5  # a label-disagreement cut may take up to half the candidates
ERROR_LEFT_SCALE = 2.0  # stage b cuts at most 2 ε̃′ (1 cut too little on the icons pool: benchmarks/quality.py)
MAX_BINS, ROWS_PER_STRATUM = 50, 20


def tail_fraction(r: float, teacher_error: float | None = None, *, label_noise: float | None = None,
                  error_left: float | None = None) -> float:
    """The share of candidates cut as likely junk by the label-free score at kept ratio r.

    The budget term clip(0.8 − r, 0.05, 0.3), then: with a label-noise estimate η̂ (labelled pools),
    at most clip(η̂, 0, 0.3) — a pool whose labels the teacher confirms shows little junk, and on a
    clean pool the hardest rows are informative (no floor: a clean pool loses no more than η̂ says) —
    and at most clip(2 ε̃′, 0, 0.3) for the teacher's typical uncertainty ε̃′ = median(1 − max p_T) on the
    rows the label stage left (``error_left``): a teacher sure of nearly all of them teaches through its soft labels even
    on odd-looking rows, so little is cut; without labels, at least clip(ε̂, 0.05, 0.3) for the
    teacher's expected error rate ε̂ (None: the budget term alone)."""
    beta = float(np.clip(TAIL_AT_ZERO - r, TAIL_MIN, TAIL_MAX))
    if label_noise is not None and np.isfinite(label_noise):
        beta = min(beta, float(np.clip(label_noise, 0.0, TAIL_MAX)))
        if error_left is not None and np.isfinite(error_left):
            beta = min(beta, float(np.clip(ERROR_LEFT_SCALE * error_left, 0.0, TAIL_MAX)))
        return beta
    if teacher_error is not None and np.isfinite(teacher_error):
        beta = max(beta, float(np.clip(teacher_error, TAIL_MIN, TAIL_MAX)))
    return beta


def label_tail_fraction(label_noise: float) -> float:
    """clip(η̂, 0, 0.5): the share of labelled candidates cut for the teacher's disagreement with
    their label, given the label-noise estimate η̂ (no floor: on a pool whose labels the teacher
    confirms, the rows it doubts most are its hardest correct rows, which distillation learns most
    from — ``benchmarks/quality_clean.py``)."""
    return float(np.clip(label_noise, 0.0, LABEL_TAIL_MAX))


def bias_gamma(r: float) -> float:
    """γ = 2 (2r − 1): negative (favour easy bins) for small budgets, positive for large ones."""
    return 2.0 * (2.0 * r - 1.0)


def n_bins_for(n: int, num_classes: int) -> int:
    """Difficulty bins per class: about ``ROWS_PER_STRATUM`` rows per stratum, 1 to 50 (CCS)."""
    return int(min(MAX_BINS, max(1, round(n / (ROWS_PER_STRATUM * max(num_classes, 1))))))


def pct_rank(x: np.ndarray) -> np.ndarray:
    """Percentile rank in (0, 1], ties averaged (so equal values get equal ranks)."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="stable")
    xs = x[order]
    first = np.searchsorted(xs, xs, side="left")
    last = np.searchsorted(xs, xs, side="right")
    r = np.empty(len(x))
    r[order] = (first + last + 1) / 2.0
    return r / max(len(x), 1)


def centroid_distance(emb: np.ndarray, pred: np.ndarray, conf: np.ndarray) -> np.ndarray:
    """1 − cos(e_i, centroid of i's predicted class), centroids over each class's more confident half.

    One sort by (class, confidence) gives every class's median; the centroids and cosines come from
    ``group_cosine`` (chunked, no float64 copy of the embeddings): O(N·D) whatever the class count."""
    conf = np.asarray(conf, dtype=np.float64)
    if not len(conf):
        return np.zeros(0)
    order = np.lexsort((conf, pred))
    v, seg = conf[order], np.cumsum(np.r_[False, np.diff(np.asarray(pred)[order]) != 0])
    starts = np.searchsorted(seg, np.arange(seg[-1] + 1))
    ends = np.r_[starts[1:], len(v)]
    med = (v[(starts + ends - 1) // 2] + v[(starts + ends) // 2]) / 2.0  # np.median of each class…
    med[np.add.reduceat(np.isnan(v), starts) > 0] = np.nan  # …NaN when it holds a NaN
    ref = np.empty(len(v), bool)
    ref[order] = v >= med[seg]
    return 1.0 - group_cosine(emb, pred, ref=ref)


def label_free_score(view: ScoreView, rows: np.ndarray) -> tuple[np.ndarray, list[str], list[str]]:
    """Mean percentile rank of the label-free junk/OOD signals available (higher = more likely junk)."""
    parts, used, skipped = [], [], []
    conf = view.col("teacher_conf")[rows].astype(np.float64) if view.has("teacher_conf") else None
    if conf is not None:
        parts.append(pct_rank(1.0 - conf))
        used.append("teacher_low_confidence")
    else:
        skipped.append("tail_signal_teacher_confidence (no teacher_conf column)")
    if view.has("kl_ts"):
        parts.append(pct_rank(view.col("kl_ts")[rows].astype(np.float64)))
        used.append("kl_ts")
    else:
        skipped.append("tail_signal_kl_ts (no kl_ts column)")
    if view.has("embedding") and conf is not None and view.has("teacher_pred"):
        pred = view.col("teacher_pred")[rows]
        parts.append(pct_rank(centroid_distance(view.col("embedding")[rows], pred, conf)))
        used.append("class_centroid_distance")
    else:
        skipped.append("tail_signal_centroid_distance (no embedding column)")
    if not parts:
        return np.zeros(len(rows)), used, skipped
    return np.mean(parts, axis=0), used, skipped


def label_prob(view: ScoreView, rows: np.ndarray) -> np.ndarray | None:
    """p_T(given label) per row (NaN where the row has no label), or None when no row has one."""
    if view.sequence_level or not view.has("teacher_label_prob"):
        return None
    lp = view.col("teacher_label_prob")[rows].astype(np.float64)
    return lp if np.isfinite(lp).any() else None


def label_noise_estimate(view: ScoreView, rows: np.ndarray, lp: np.ndarray) -> float | None:
    """η̂ = mean(max p_T − p_T(label)) over the labelled rows (None without ``teacher_conf``)."""
    if not view.has("teacher_conf"):
        return None
    has = np.isfinite(lp)
    return float(np.mean(view.col("teacher_conf")[rows][has].astype(np.float64) - lp[has]))


def most_outlying(score: np.ndarray, among: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` positions of ``among`` with the highest ``score`` (ties by position: exact size)."""
    return among[np.lexsort((among, -score[among]))][:max(k, 0)]


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


def cut_tail(view: ScoreView, rows: np.ndarray, budget: int, *, tail: float | None) -> tuple[np.ndarray, np.ndarray, dict]:
    """(kept mask over ``rows``, outlier score, info): the label tail, then the label-free tail, cut
    (module docstring, step 1), never below the budget. ``tail``: one cut of that fraction instead,
    labelled rows ranked by label disagreement, the others by the label-free score."""
    n = len(rows)
    r = budget / max(n, 1)
    eps = float(np.mean(1.0 - view.col("teacher_conf")[rows].astype(np.float64))) \
        if view.has("teacher_conf") and n and not view.sequence_level else None  # LM: exp(−nll) is no error rate
    free, used, skipped = label_free_score(view, rows)
    lp = label_prob(view, rows) if n else None
    has = np.isfinite(lp) if lp is not None else np.zeros(n, dtype=bool)
    eta = label_noise_estimate(view, rows, lp) if lp is not None else None
    if lp is None:
        skipped.append("tail_signal_label_agreement (no labelled rows)")
    disagree = np.zeros(n)
    disagree[has] = pct_rank(1.0 - lp[has]) if has.any() else 0.0
    # the outlier score the kept rows are ranked by: the mean of both ranks where a row has both
    score = np.where(has, (disagree + free) / 2.0, free) if used else disagree
    keep = np.ones(n, dtype=bool)
    room = max(n - budget, 0)
    signals = (["teacher_label_disagreement"] if eta is not None else []) + used
    if tail is not None:
        one = np.where(has, disagree, free) if used else disagree
        cut = most_outlying(one, np.arange(n), min(int(np.floor(float(tail) * n)), room) if signals else 0)
        keep[cut] = False
        info = {"tail_rule": "given", "tail_fraction": float(tail), "label_cut": None, "ood_cut": None}
    else:
        label_beta = label_tail_fraction(eta) if eta is not None else None
        n_label = min(int(np.floor(label_beta * has.sum())), room) if label_beta is not None else 0
        keep[most_outlying(disagree, np.flatnonzero(has), n_label)] = False
        alive = np.flatnonzero(keep)
        eps_left = float(np.median(1.0 - view.col("teacher_conf")[rows[alive]].astype(np.float64))) \
            if eps is not None and len(alive) else None
        ood_beta = tail_fraction(r, label_noise=eta, error_left=eps_left) if eta is not None else tail_fraction(r, eps)
        n_ood = min(int(np.floor(ood_beta * len(alive))), room - n_label) if used else 0
        keep[most_outlying(free, alive, n_ood)] = False
        info = {"tail_rule": ("labelled rows: clip(label_noise, 0, 0.5) by label disagreement; then "
                              "min(clip(0.8 - r, 0.05, 0.3), clip(label_noise, 0, 0.3), clip(2 teacher_error_left, 0, 0.3)) "
                              "of the rest by the label-free score; teacher_error_left = median(1 - max p_T) "
                              "over the rows the label stage left") if eta is not None else
                             "max(clip(0.8 - r, 0.05, 0.3), clip(teacher_error, 0.05, 0.3)) by the label-free score",
                "label_tail_fraction": label_beta, "label_cut": n_label, "teacher_error_left": eps_left,
                "ood_tail_fraction": ood_beta, "ood_cut": n_ood}
    n_cut = int((~keep).sum())
    if not signals:
        skipped.append("tail_cut (no teacher signal in the scores)")
    info = {"kept_ratio_r": r, "teacher_error": eps, "label_noise": eta,
            "label_noise_estimate": "mean(max p_T - p_T(label)) over labelled rows" if eta is not None else None,
            **info, "tail_cut": n_cut, "tail_fraction_cut": n_cut / max(n, 1), "tail_signals": signals}
    return keep, score, {**info, "skipped": skipped}


def strata_groups(view: ScoreView, rows: np.ndarray, *, domains=None) -> tuple[np.ndarray, int, str]:
    """(group per row, number of groups, name): the teacher-predicted class, or on causal LMs the
    domain (``domains``: a sample_id → domain table), which the view has no class for."""
    if not view.sequence_level:
        pred = view.col("teacher_pred")[rows].astype(np.int64) if view.has("teacher_pred") else np.zeros(len(rows), np.int64)
        return pred, view.num_classes, "teacher_pred"
    if view.has("domain"):
        dom = view.col("domain")[rows]
    elif domains is not None:
        pos = dict(zip(domains.column("sample_id").to_pylist(), domains.column("domain").to_pylist()))
        ids = view.sample_ids[rows]
        dom = np.array([pos.get(i) for i in ids], dtype=object)
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
    typical = np.zeros(n)
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
