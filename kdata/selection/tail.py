"""The default recipe's tail cut: the candidates most likely junk, out of distribution or mislabelled,
cut before ``coverage`` samples (``kdata.selection.methods.coverage``), in two stages, every count,
fraction and rule recorded.

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
   rows stage a left — the median, not the mean, which the odd rows this stage is about inflate.
   A teacher sure of nearly all of them teaches through its soft labels even on odd-looking rows
   (distillation transfers a teacher's function outside its training distribution too: Beyer et
   al., CVPR 2022), so cutting them costs good, hard rows. On clean CIFAR the hardest rows are
   informative; on a web pool they are mostly junk and shifted rows whatever the budget, so the
   share does not shrink with the budget as CCS's hand-set cut does until the budget nears all the
   candidates. How much of a pool is junk shows in η̂ too (junk and shifted rows carry labels the
   teacher rejects), and a pool whose labels the teacher confirms is one where the hardest rows are
   informative again: the caps keep the stage from cutting a clean pool's hardest, correct rows
   (``benchmarks/quality_clean.py`` and ``benchmarks/quality.py`` measure the recipe on both kinds).
   The outlier score: the mean of the percentile ranks of low teacher max-probability
   ``1 − max p_T``, the teacher–student KL ``kl_ts`` (CCS's "hardest") and the cosine distance of
   the teacher embedding to the centroid of the teacher-predicted class (centroid over that
   class's more confident half; needs an ``embedding`` column). Without any labelled row, stage a
   is skipped and this stage cuts max(clip(0.8 − r, 0.05, 0.3),
   clip(ε̂, 0.05, 0.3)) with ε̂ = mean(1 − max p_T), the teacher's expected error rate (the
   estimate RAD uses), so a teacher that errs on many rows cuts at least that share.

A signal whose column is missing (bring-your-own ``--scores``) is skipped and recorded in
``info["skipped"]``; with no signal at all no tail is cut. Energy −log Σ exp z_T was measured and
left out: on builtin:digits-web it does not separate junk (AUC ≈ 0.5). The two stages together never
leave fewer candidates than the budget.
"""

from __future__ import annotations

import numpy as np

from kdata.core.vectors import group_cosine
from kdata.selection.methods.view import ScoreView

TAIL_MIN, TAIL_MAX, TAIL_AT_ZERO = 0.05, 0.3, 0.8
LABEL_TAIL_MAX = 0.5  # a label-disagreement cut may take up to half the candidates
ERROR_LEFT_SCALE = 2.0  # stage b cuts at most 2 ε̃′ (1 cut too little on the icons pool: benchmarks/quality.py)


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


def cut_tail(view: ScoreView, rows: np.ndarray, budget: int, *, tail: float | None) -> tuple[np.ndarray, np.ndarray, dict]:
    """(kept mask over ``rows``, outlier score, info): the label tail, then the label-free tail, cut
    (module docstring), never below the budget. ``tail``: one cut of that fraction instead, labelled
    rows ranked by label disagreement, the others by the label-free score."""
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
