"""Permanent random numbers (PRN) and order sampling: stable randomised selection.

Every randomised choice in ``kdata.selection`` draws from one number per sample, ``prn(id, seed)``,
a keyed BLAKE2b hash of the ``sample_id`` (RFC 7693; stdlib ``hashlib``, so the same on every
process, platform and Python build). A row's fate then depends only on its own number and its own
probability — not on its position in a sorted list — so a small change in one row's score moves
at most that row (and the one it swaps with at the budget's edge). This is the survey-sampling
idea of permanent random numbers (Ohlsson 1995) used by sequential Poisson and Pareto sampling.

``order_sample`` draws exactly ``b`` rows with target inclusion probabilities ``λ`` by Pareto order
sampling (Rosén 1997, "On sampling with probability proportional to size", JSPI 62): keep the b
rows with the smallest ranking variable

    Q_i = [u_i / (1 − u_i)] / [λ_i / (1 − λ_i)],      u_i = prn(id_i)

(sequential Poisson sampling, Ohlsson 1998, uses Q_i = u_i / λ_i; Pareto's inclusion
probabilities are closer to λ for small samples). Rows with λ_i = 1 are always kept, λ_i = 0 never
while any other row is left.
"""

from __future__ import annotations

import hashlib

import numpy as np

_TO_UNIT = 2.0 ** -53


def prn(sample_ids, *, seed: int, salt: str = "") -> np.ndarray:
    """Uniform [0, 1) number per sample id, from BLAKE2b keyed with ``seed`` (and ``salt``).

    Deterministic across processes and platforms, independent of row order; about 5 s per million ids,
    so a run computes it once (``ScoreView.prn``, cached) and slices it (``ranking.top_k(tie=...)``).
    """
    key = int(seed).to_bytes(16, "little", signed=True)
    person = salt.encode()[:16]
    digests = b"".join(hashlib.blake2b(str(s).encode(), digest_size=8, key=key, person=person).digest()
                       for s in sample_ids)
    h = np.frombuffer(digests, dtype="<u8")
    return (h >> np.uint64(11)).astype(np.float64) * _TO_UNIT


def pareto_key(u: np.ndarray, p: np.ndarray) -> np.ndarray:
    """log Q_i of Pareto order sampling (Rosén 1997): logit(u_i) − logit(λ_i); smaller is kept first."""
    u = np.clip(np.asarray(u, dtype=np.float64), 1e-300, 1.0 - 2.0 ** -53)
    lam = np.clip(np.asarray(p, dtype=np.float64), 0.0, 1.0)
    with np.errstate(divide="ignore"):
        lu = np.log(u) - np.log1p(-u)
        ll = np.log(lam) - np.log1p(-lam)  # +inf for λ = 1, −inf for λ = 0
    return lu - ll


def order_sample(p: np.ndarray, budget: int, *, u: np.ndarray) -> np.ndarray:
    """Indices of the ``budget`` rows with the smallest Pareto key (ties by ``u``, then position)."""
    n = len(p)
    b = int(min(max(budget, 0), n))
    key = pareto_key(u, p)
    order = np.lexsort((np.arange(n), u, key))
    return order[:b]
