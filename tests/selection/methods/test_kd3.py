"""KD³ (kdata.selection.methods.kd3): tiny hand-computed cases and the top-k fast path."""

from __future__ import annotations

import numpy as np
import pytest

from kdata.core.errors import KdataError
from kdata.selection.methods.kd3 import kd3_score, kd3_select
from kdata.selection.run import select
from tests.helpers.methods import PS, PT, kept_ids, scores_from_probs


def test_kd3_score_and_select_by_hand():
    np.testing.assert_allclose(kd3_score(np.array(PT), np.array(PS)), [0.85, 0.55, 0.60, 0.925])
    assert kd3_select(np.array(PT), np.array(PS), 2).tolist() == [3, 0]  # best first
    # dynamic: a student that now agrees on s1 moves it up
    ps2 = np.array(PS)
    ps2[1] = [0.99, 0.01]
    assert kd3_select(np.array(PT), ps2, 2).tolist() == [1, 3]  # s1 now .945 > s3 .925


@pytest.mark.parametrize("budget", [-1, 2.5, "2", None])
def test_kd3_select_budget_is_a_row_count(budget):
    """budget -1 returned all rows but one; 2.5 was truncated."""
    with pytest.raises(KdataError, match=r"^kd3_select: budget .*: must be an integer ≥ 0"):
        kd3_select(np.array(PT), np.array(PS), budget)
    assert kd3_select(np.array(PT), np.array(PS), 0).tolist() == []
    assert kd3_select(np.array(PT), np.array(PS), np.int32(9)).tolist() == [3, 0, 2, 1]


def test_kd3_in_select_with_threshold_names_reasons(tmp_path):
    scores = scores_from_probs(tmp_path, PT, PS)
    sel = select(scores, methods=["kd3"], budget=2, seed=0, num_classes=2, options={"kd3": {"threshold": 0.58}})
    assert kept_ids(scores, sel) == ["s0", "s3"]
    assert sel.reason.tolist() == [None, "kd3_low_confidence", "kd3_over_budget", None]
    assert sel.stage.tolist() == ["kd3"] * 4  # kept rows too: the ranker decided them


def test_topk_fast_paths_match_dense_reconstruction(tmp_path):
    """With only top-k soft labels (C > 128), kd3/miniplm/ddk use O(N·k) paths equal to the dense ones."""
    from kdata.selection.methods.kd3 import _kd3_dense, kd3_score_topk
    from kdata.selection.methods.view import ScoreView
    from tests.helpers.methods import random_scores

    rng = np.random.default_rng(3)
    full = random_scores(tmp_path, rng, 60, 80)
    topk_only = full.drop_columns(["teacher_logits", "student_logits"]) if "teacher_logits" in full.column_names \
        else full
    view = ScoreView(topk_only, num_classes=80)
    assert view.topk_dense()
    np.testing.assert_allclose(kd3_score_topk(view), _kd3_dense(view, 0.5), atol=1e-9)
    cls = rng.integers(0, 80, size=60)
    dense = view.probs("student")[np.arange(60), cls]
    np.testing.assert_allclose(view.prob_at("student", cls), dense, atol=1e-9)
