"""The default recipe's tail cut (kdata.selection.tail): how much each stage may cut, and the
class-centroid distance its label-free score ranks by."""

import numpy as np
import pytest

from kdata.selection.tail import centroid_distance, label_tail_fraction, tail_fraction


def test_tail_fraction_is_capped_by_twice_the_teacher_error_left_after_the_label_stage():
    assert tail_fraction(0.1, label_noise=0.3, error_left=0.05) == pytest.approx(0.1)
    assert tail_fraction(0.1, label_noise=0.2, error_left=0.4) == pytest.approx(0.2)  # η̂ binds
    assert tail_fraction(0.7, label_noise=0.3, error_left=0.4) == pytest.approx(0.1)  # the budget term binds
    assert tail_fraction(0.1, label_noise=0.3, error_left=0.0) == 0.0
    assert tail_fraction(0.1, 0.02, error_left=0.01) == pytest.approx(0.3)  # unlabelled: no such cap


def test_label_tail_fraction_follows_the_label_noise_estimate():
    assert label_tail_fraction(0.36) == pytest.approx(0.36)
    assert label_tail_fraction(0.9) == pytest.approx(0.5)  # at most half the labelled rows
    assert label_tail_fraction(0.02) == pytest.approx(0.02) and label_tail_fraction(0.0) == 0.0  # no floor


class _RowsOnly:
    """Embeddings readable only a block of rows at a time (as a memory map of a huge matrix is best
    read): converting the whole matrix at once is refused."""

    def __init__(self, x: np.ndarray, most: int):
        self.x, self.most, self.shape, self.dtype = x, most, x.shape, x.dtype

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, rows):
        assert len(np.atleast_1d(np.arange(len(self.x))[rows])) <= self.most, "read more than a block of rows"
        return self.x[rows]

    def __array__(self, *a, **k):
        raise AssertionError("the whole embedding matrix was converted at once")


def _centroid_distance_per_class(emb, pred, conf):
    """The definition, one class at a time in float64 (what centroid_distance computed before)."""
    import warnings

    e = np.asarray(emb, dtype=np.float64)
    e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    out = np.zeros(len(e))
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # a class without reference rows: NaN
        for c in np.unique(pred):
            m = pred == c
            cen = e[m & (conf >= np.median(conf[m]))].mean(0)
            cen /= max(np.linalg.norm(cen), 1e-12)
            out[m] = 1.0 - e[m] @ cen
    return out


def test_centroid_distance_reads_the_embeddings_a_block_at_a_time_and_matches_the_per_class_definition():
    rng = np.random.default_rng(0)
    for trial in range(40):
        n, d = int(rng.integers(1, 400)), int(rng.integers(1, 9))
        emb = rng.normal(size=(n, d)).astype([np.float16, np.float32, np.float64][trial % 3])
        emb[0] = 0  # an all-zero row stays at distance 1
        pred = rng.integers(0, int(rng.integers(1, 30)), n) * 7 - 5  # sparse, negative class ids
        conf = np.round(rng.random(n), 1)  # ties at the median
        if trial % 4 == 0:
            conf[rng.integers(0, n)] = np.nan  # a class whose median is NaN has no centroid: NaN
        want = _centroid_distance_per_class(emb, pred, conf)
        got = centroid_distance(emb, pred, conf)
        assert np.allclose(got, want, rtol=0, atol=1e-12, equal_nan=True), trial
    emb = rng.normal(size=(50_000, 16)).astype(np.float16)
    pred, conf = rng.integers(0, 1000, len(emb)), rng.random(len(emb))
    got = centroid_distance(_RowsOnly(emb, most=16384), pred, conf)
    assert np.allclose(got, _centroid_distance_per_class(emb, pred, conf), rtol=0, atol=1e-12)
    assert centroid_distance(np.zeros((0, 4)), np.zeros(0, int), np.zeros(0)).shape == (0,)
