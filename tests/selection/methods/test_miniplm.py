"""MiniPLM (kdata.selection.methods.miniplm): hand-computed cases, the low tail, per-token columns."""

from __future__ import annotations

import numpy as np
import pytest

from kdata.selection.run import select
from tests.helpers.methods import PS, PT, kept_ids, scores_from_probs


def test_miniplm_by_hand(tmp_path):
    pt = [[0.9, 0.1], [0.5, 0.5], [0.2, 0.8]]
    ps = [[0.5, 0.5], [0.9, 0.1], [0.2, 0.8]]
    # label 0, 0, unknown (→ teacher prediction 1): scores log(.9/.5)=.588, log(.5/.9)=-.588, 0
    scores = scores_from_probs(tmp_path, pt, ps, label=[0, 0, -1])
    sel = select(scores, methods=["miniplm"], budget=2, seed=0, num_classes=2)
    np.testing.assert_allclose(sel.scores["score_miniplm"], [np.log(0.9 / 0.5), np.log(0.5 / 0.9), 0.0], atol=1e-6)
    assert kept_ids(scores, sel) == ["s0", "s2"]


def test_miniplm_is_exact_in_the_low_tail():
    """From logits the score is log-softmax difference however small the probabilities (a floor at
    1e-12 moved scores of rows the teacher gives under 1e-12 by up to 24 nats)."""
    import pyarrow as pa

    t = np.array([[40.0, 0.0], [0.0, 40.0], [30.0, 0.0]])  # label 1, 0, 1: p_T(label) = e^-40, e^-40, e^-30
    s = np.array([[0.0, 0.0], [0.0, 0.0], [60.0, 0.0]])
    table = pa.table({"sample_id": ["a", "b", "c"], "teacher_logits": pa.array(t.tolist(), pa.list_(pa.float32())),
                      "student_logits": pa.array(s.tolist(), pa.list_(pa.float32())), "label_idx": [1, 0, 1]})
    sel = select(table, methods=["miniplm"], budget=1, seed=0, num_classes=2)

    def log_softmax(z):
        return z - np.logaddexp(z[:, 0], z[:, 1])[:, None]

    want = log_softmax(t)[np.arange(3), [1, 0, 1]] - log_softmax(s)[np.arange(3), [1, 0, 1]]
    np.testing.assert_allclose(sel.scores["score_miniplm"], want, rtol=1e-6)
    assert want[2] == pytest.approx(-30 + 60, abs=1e-6)  # both far below 1e-12: only the exact logs rank it first
    assert kept_ids(table, sel) == ["c"]


def test_miniplm_per_token_logprob_columns(tmp_path):
    import pyarrow as pa

    extra = {"teacher_logprob": pa.array([[-1.0, -1.0], [-3.0], [-0.5, -0.5, -0.5]], pa.list_(pa.float32())),
             "reference_logprob": pa.array([[-2.0, -2.0], [-1.0], [-0.5, -1.5, -0.5]], pa.list_(pa.float32()))}
    scores = scores_from_probs(tmp_path, PT[:3], PS[:3], extra=extra)
    sel = select(scores, methods=["miniplm"], budget=1, seed=0, num_classes=2)
    np.testing.assert_allclose(sel.scores["score_miniplm"], [1.0, -2.0, 1 / 3], atol=1e-6)
    assert kept_ids(scores, sel) == ["s0"]


def test_miniplm_rows_with_empty_token_lists_rank_last_wherever_they_are(tmp_path):
    """An empty list as the last row crashed np.add.reduceat (IndexError)."""
    import pyarrow as pa

    lists = pa.list_(pa.float32())
    extra = {"teacher_logprob": pa.array([[-1.0, -2.0], [-1.0], []], lists),
             "reference_logprob": pa.array([[-2.0, -2.0], [-1.0], []], lists)}
    scores = scores_from_probs(tmp_path, PT[:3], PS[:3], extra=extra)
    sel = select(scores, methods=["miniplm"], budget=2, seed=0, num_classes=2)
    got = sel.scores["score_miniplm"]
    np.testing.assert_allclose(got[:2], [0.5, 0.0], atol=1e-6)
    assert got[2] == -np.inf and kept_ids(scores, sel) == ["s0", "s1"]
