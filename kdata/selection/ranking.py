"""Ranking helpers shared by the selection methods and the chain runner."""

from __future__ import annotations

import numpy as np

from kdata.core.errors import KdataError
from kdata.selection.prn import prn


def check_count(k, *, what: str = "k") -> int:
    """``k`` as a row count: an integer ≥ 0 (Python or numpy, not bool), else one KdataError line.
    A negative count would slice from the end (keep all rows but a few) and a float would fail later."""
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)) or k < 0:
        raise KdataError(f"{what} {k!r}: must be an integer ≥ 0 (rows to keep)")
    return int(k)


def top_k(score: np.ndarray, k: int, *, seed: int, groups: np.ndarray | None = None,
          ids: np.ndarray | None = None, tie: np.ndarray | None = None) -> np.ndarray:
    """Indices of the ``k`` highest scores; ties broken by a seeded random key, then by index.

    ``tie``: the rows' permanent random numbers under ``seed``, already computed (the view's cached
    ``ScoreView.prn(seed)`` sliced to these rows), so a run hashes its ids once, not once per call.
    Else with ``ids`` (the rows' sample ids) the tie key is computed here (``kdata.selection.prn``);
    either way ties resolve the same whatever the row order. Without both, a seeded generator over
    positions (kept for callers that have no ids).

    With ``groups``, the budget is split as evenly as possible over the groups present (a group
    with too few rows gives its share to the others) — class-balanced selection.
    """
    n = len(score)
    k = max(0, min(check_count(k), n))
    if tie is not None:
        tie = np.asarray(tie, dtype=np.float64)
        if tie.shape != (n,):
            raise ValueError(f"top_k: tie has shape {tie.shape} for {n} scores")
    else:
        tie = prn(ids, seed=seed) if ids is not None else np.random.default_rng(seed).random(n)
    s = np.nan_to_num(np.asarray(score, dtype=np.float64), nan=-np.inf)
    order = np.lexsort((np.arange(n), tie, -s))  # best first
    if groups is None:
        return order[:k]
    _, code, counts = np.unique(np.asarray(groups), return_inverse=True, return_counts=True)
    quota = even_split(k, counts)
    co = code.ravel()[order]  # each row's group, best first
    by_group = np.argsort(co, kind="stable")  # grouped, best first within a group
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.empty(n, dtype=np.int64)  # a row's place among its group's rows, best first
    rank[by_group] = np.arange(n) - starts[co[by_group]]
    return order[rank < quota[co]]  # still best first: one pass, not one per group


def even_split(k: int, capacity: np.ndarray) -> np.ndarray:
    """Split ``k`` over bins as evenly as capacity allows (water-filling)."""
    quota = np.zeros(len(capacity), dtype=np.int64)
    left = k
    open_ = capacity > 0
    while left > 0 and open_.any():
        share = max(1, left // int(open_.sum()))
        for i in np.flatnonzero(open_):
            add = min(share, capacity[i] - quota[i], left)
            quota[i] += add
            left -= add
            if quota[i] >= capacity[i]:
                open_[i] = False
            if left == 0:
                break
    return quota
