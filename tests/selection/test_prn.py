"""Permanent random numbers and Pareto order sampling (kdata.selection.prn)."""

import numpy as np
from scipy import stats

from kdata.selection.prn import order_sample, prn


def test_prn_is_deterministic_seeded_and_pinned():
    ids = [f"id-{i}" for i in range(100)]
    a, b = prn(ids, seed=7), prn(ids, seed=7)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, prn(ids, seed=8))
    assert not np.array_equal(a, prn(ids, seed=7, salt="other"))
    # BLAKE2b is specified (RFC 7693): the same number on every platform and process
    assert prn(["sample-0"], seed=0)[0] == PINNED


PINNED = 0.8926108692637482  # prn(["sample-0"], seed=0), also re-derived below from hashlib by hand


def test_prn_matches_a_hand_computed_blake2b():
    import hashlib

    d = hashlib.blake2b(b"sample-0", digest_size=8, key=(0).to_bytes(16, "little", signed=True)).digest()
    assert PINNED == (int.from_bytes(d, "little") >> 11) / 2.0 ** 53


def test_prn_is_uniform_and_independent_of_row_order():
    ids = np.array([f"row{i:06d}" for i in range(20_000)], dtype=object)
    u = prn(ids, seed=3)
    assert ((u >= 0) & (u < 1)).all()
    assert stats.kstest(u, "uniform").pvalue > 1e-3
    perm = np.random.default_rng(0).permutation(len(ids))
    np.testing.assert_array_equal(prn(ids[perm], seed=3), u[perm])


def test_order_sample_inclusion_follows_the_probabilities():
    p = np.array([0.9, 0.6, 0.3, 0.1, 0.1, 1.0])  # sums to 3
    ids = [f"x{i}" for i in range(len(p))]
    hits = np.zeros(len(p))
    runs = 3000
    for seed in range(runs):
        hits[order_sample(p, 3, u=prn(ids, seed=seed))] += 1
    freq = hits / runs
    assert freq[5] == 1.0  # a certain row is always drawn
    np.testing.assert_allclose(freq, p, atol=0.05)  # Pareto sampling: inclusion ≈ target (Rosén 1997)


def test_order_sample_moves_few_rows_when_one_probability_moves():
    rng = np.random.default_rng(1)
    p = rng.uniform(0.05, 0.6, size=500)
    p *= 100 / p.sum()
    u = rng.random(500)
    a = set(order_sample(p, 100, u=u).tolist())
    q = p.copy()
    q[0] *= 1.05
    b = set(order_sample(q, 100, u=u).tolist())
    assert len(a ^ b) <= 2  # one row in, one row out at most
