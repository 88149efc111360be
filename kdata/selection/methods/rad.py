"""Robust Active Distillation, RAD (Baykal, Trinh, Iliopoulos, Menghani, Vee, ICLR 2023, arXiv 2210.01213).

Setting: the teacher is expensive (a budget ``b`` of soft-label queries) and sometimes wrong. RAD
chooses which pool points to query from the **student's** predictions alone, with a sampling
distribution that is optimal against the worst case over where the teacher's mistakes fall
(a zero-sum game between the learner and an adversary), and has no tuning parameter. kdata
computes the selection from student-only quantities; the teacher is "queried" only on the
selected rows, and the method reports ``info={"teacher_queries": b}``. In the pipeline, where
teacher scores already exist, they are not read by this method — the count is what a
teacher-on-demand deployment would spend.

Only the abstract-level description of the paper was accessible while writing this, so the game
below is derived from that description (informativeness vs. correctness, max–min, parameter-free),
and written out so it can be checked.

Derivation
----------
Gain. Point i's informativeness to the student is its margin-based uncertainty

    g_i = 1 − (p_S(1st) − p_S(2nd)) ∈ [0, 1]          (student margin; 1 = maximally unsure)

Game. The learner picks inclusion probabilities p ∈ [0, 1]^n with Σ p_i = b (exactly b queries in
expectation, and exactly b with the sampler below). The adversary picks which queried points
the teacher labels wrongly: z ∈ [0, 1]^n with Σ z_i ≤ k, and a wrongly labelled point yields no
gain. The learner's value is

    V(p) = min_z Σ_i p_i g_i (1 − z_i) = Σ_i v_i − top_k(v),    v_i = p_i g_i,

because the adversary puts its k mistakes on the largest expected gains (fractional top-k sum).
Using top_k(v) = min_t [k t + Σ_i (v_i − t)^+] (LP duality for the k-largest sum),

    V(p) = max_t  Σ_i min(p_i g_i, t) − k t.

For a fixed level t, maximising Σ_i min(p_i g_i, t) under Σ p_i = b is a fractional knapsack:
point i returns value g_i per unit of probability up to the cap min(g_i, t), reached at
p_i = min(1, t / g_i). So fill points in decreasing order of g: those with g_i ≥ t get
p_i = t / g_i (worth t each), those with g_i < t get p_i = 1 (worth g_i), until the mass b is
spent. With prefix sums over the sorted gains (H_a = Σ_{j<a} 1/g_(j), G_a = Σ_{j<a} g_(j)) the
value F(t) of each level is O(log n). F is piecewise linear in t, so kdata evaluates it at the
breakpoints — every gain value and every full-coverage level t = b / H_m — and reads off p.

Consequences, which are the point of RAD: with k = 0 (a perfect teacher) the optimum is t ≥ max g,
i.e. plain top-b uncertainty sampling; as k grows the optimum lowers t, giving the most
uncertain points *less* probability (t/g_i) and spreading the budget — the adversary (the
teacher's mistakes, which concentrate on the most confusing points: junk, shifted, ambiguous
inputs) can destroy less. No parameter is set by hand.

Mistake budget. k is the expected number of teacher mistakes among the b queries. Without
teacher queries it is estimated from the student: ε̂ = mean_i (1 − max p_S(i)) is the student's
expected error on the pool, an upper bound on a stronger teacher's (the conservative, max–min
choice); k = ε̂ · b. ``teacher_error=`` overrides ε̂.

Sampling. Exactly b points are drawn with inclusion probabilities p by systematic sampling
along an order given by a seeded hash of each ``sample_id`` (permutation invariant,
deterministic under the seed).
"""

from __future__ import annotations

import numpy as np

from kdata.selection.methods import MethodResult, register
from kdata.selection.methods.view import ScoreView


def student_gain(view: ScoreView, rows: np.ndarray) -> np.ndarray:
    """g_i = 1 − student margin (from the scores table's ``student_margin``)."""
    return np.clip(1.0 - view.col("student_margin")[rows].astype(np.float64), 0.0, 1.0)


def _values(ts: np.ndarray, gs: np.ndarray, inv_cum: np.ndarray, g_cum: np.ndarray, b: float, k: float) -> np.ndarray:
    """F(t) for an array of levels, gains sorted descending (see the module docstring)."""
    n = len(gs)
    ts = np.asarray(ts, dtype=np.float64)
    a = np.searchsorted(-gs, -ts, side="right")  # number of gains ≥ t
    cost_a = ts * inv_cum[a]
    # branch 1: the mass runs out inside the p = t/g block: m full points worth t, one fractional
    m = np.minimum(np.searchsorted(inv_cum, b / ts, side="right") - 1, n)
    rest = b - ts * inv_cum[m]
    frac = np.where(m < n, rest * gs[np.minimum(m, n - 1)] / ts, 0.0)
    v1 = ts * (m + frac)
    # branch 2: the block is covered; the remaining mass goes at p = 1 to the next points (worth g)
    left = np.maximum(b - cost_a, 0.0)
    full = np.floor(np.minimum(left, n - a)).astype(np.int64)
    nxt = np.minimum(a + full, n - 1)
    v2 = a * ts + g_cum[a + full] - g_cum[a] + np.where(a + full < n, (left - full) * gs[nxt], 0.0)
    return np.where(cost_a >= b, v1, v2) - k * ts


def rad_probabilities(gain: np.ndarray, budget: int, *, mistakes: float) -> tuple[np.ndarray, float]:
    """Max–min inclusion probabilities p (Σ p = budget, 0 ≤ p ≤ 1) and the optimal level t.

    F(t) is piecewise linear, so its maximum is at a breakpoint; candidates are every gain value
    and every full-coverage level b / H_m (chunked, O(n log n) overall).
    """
    n = len(gain)
    b = float(min(budget, n))
    g = np.clip(np.asarray(gain, dtype=np.float64), 1e-9, None)
    if b >= n:
        return np.ones(n), float(g.max(initial=1.0))
    order = np.argsort(-g, kind="stable")
    gs = g[order]
    inv_cum = np.concatenate([[0.0], np.cumsum(1.0 / gs)])
    g_cum = np.concatenate([[0.0], np.cumsum(gs)])
    k = float(mistakes)
    best_t, best_v = float(gs[0]), -np.inf
    for cands in (gs, b / inv_cum[1:]):
        for i in range(0, n, 1 << 20):
            c = cands[i:i + (1 << 20)]
            v = _values(c, gs, inv_cum, g_cum, b, k)
            j = int(np.argmax(v))
            if v[j] > best_v + 1e-12:
                best_v, best_t = float(v[j]), float(c[j])
    t = best_t
    cap = np.minimum(1.0, t / gs)  # per-point probability cap, in gain order
    before = np.cumsum(cap) - cap
    p_sorted = np.clip(np.minimum(cap, b - before), 0.0, None)
    short = b - p_sorted.sum()
    if short > 1e-9:  # caps too small to hold the mass (t below the gains): top up in gain order
        room = 1.0 - p_sorted
        p_sorted += np.clip(np.minimum(room, short - (np.cumsum(room) - room)), 0.0, None)
    p = np.empty(n)
    p[order] = p_sorted
    return p, t


def systematic_sample(p: np.ndarray, budget: int, *, keys: np.ndarray, seed: int) -> np.ndarray:
    """Exactly ``budget`` indices with inclusion probabilities ``p`` (Σ p = budget), ordered by ``keys``."""
    n = len(p)
    b = int(min(budget, n))
    if b >= n:
        return np.arange(n)
    order = np.lexsort((np.arange(n), keys))
    cum = np.cumsum(p[order])
    cum *= b / cum[-1]
    u = np.random.default_rng(seed).random()
    # point j is chosen when an arrow u, u+1, ... falls in (cum[j-1], cum[j]]
    hits = np.floor(cum - u) - np.floor(np.concatenate([[0.0], cum[:-1]]) - u)
    chosen = order[hits > 0]
    if len(chosen) != b:  # float round-off at the ends: repair by probability
        mask = np.zeros(n, dtype=bool)
        mask[chosen] = True
        if len(chosen) > b:
            drop = chosen[np.argsort(p[chosen], kind="stable")[: len(chosen) - b]]
            mask[drop] = False
        else:
            rest = np.flatnonzero(~mask)
            mask[rest[np.argsort(-p[rest], kind="stable")[: b - len(chosen)]]] = True
        chosen = np.flatnonzero(mask)
    return chosen


@register("rad", doc="Robust Active Distillation: max–min query distribution from the student alone (arXiv 2210.01213)")
def rad(view: ScoreView, *, budget, seed, alive=None, teacher_error: float | None = None, **_) -> MethodResult:
    n = len(view)
    rows = np.arange(n) if alive is None else np.flatnonzero(alive)
    score = np.zeros(n, dtype=np.float64)
    if not len(rows):
        return MethodResult(score=score, info={"teacher_queries": 0})
    b = int(min(budget, len(rows)))
    g = student_gain(view, rows)
    eps = float(np.mean(1.0 - view.col("student_conf")[rows].astype(np.float64))) if teacher_error is None \
        else float(teacher_error)
    k = eps * b
    p, t = rad_probabilities(g, b, mistakes=k)
    chosen = systematic_sample(p, b, keys=view.row_uniform(seed, "rad")[rows], seed=seed)
    score[rows] = p
    score[rows[chosen]] += 1.0  # sampled rows first; the framework's top-b keeps exactly them
    return MethodResult(score=score, info={"teacher_queries": int(len(chosen)), "teacher_error": eps,
                                           "mistakes": k, "level_t": t})
