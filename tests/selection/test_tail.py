"""The default recipe's tail cut (kdata.selection.tail): stage c, the student's confident
contradictions of the teacher, cut only where the typical rows say they mark atypical ones."""

import numpy as np
import pytest

from kdata.selection.methods.view import ScoreView
from kdata.selection.run import select
from kdata.selection.tail import cut_tail
from tests.helpers.methods import scores_from_probs


def _pool(tmp_path, *, contra_typical: int, contra_atypical: int, embedding: bool = True, name="p.parquet"):
    """400 rows, 4 classes, a sure teacher whose labels agree with it (stages a and b cut nothing).
    Half the rows sit on their class direction in the embedding, half far from it; the student agrees
    with the teacher except on ``contra_*`` rows of each half, where it puts 0.8 on another class."""
    import pyarrow as pa

    rng = np.random.default_rng(3)
    n, c = 400, 4
    pred = np.arange(n) % c
    atypical = np.arange(n) >= n // 2
    p_t = np.full((n, c), 0.1 / (c - 1))
    p_t[np.arange(n), pred] = 0.9
    s_cls = pred.copy()
    flip = np.r_[np.flatnonzero(~atypical)[:contra_typical], np.flatnonzero(atypical)[:contra_atypical]]
    s_cls[flip] = (pred[flip] + 1) % c
    p_s = np.full((n, c), 0.2 / (c - 1))
    p_s[np.arange(n), s_cls] = 0.8
    emb = np.eye(8)[pred] + rng.normal(size=(n, 8)) * np.where(atypical, 0.8, 0.05)[:, None]
    extra = {"embedding": pa.array(emb.astype(np.float32).tolist(), pa.list_(pa.float32()))} if embedding else None
    table = scores_from_probs(tmp_path, p_t, p_s, name=name, label=pred, extra=extra)
    return table, {f"s{i}" for i in flip if atypical[i]}


def test_contradictions_of_atypical_rows_are_cut_when_typical_rows_show_none(tmp_path):
    table, want = _pool(tmp_path, contra_typical=0, contra_atypical=30)
    view = ScoreView(table, num_classes=4)
    keep, _, info = cut_tail(view, np.arange(len(view)), 100, tail=None)
    assert (info["label_cut"], info["ood_cut"]) == (0, 0)  # labels confirmed: only stage c cuts
    assert info["contradiction_cut"] == 30 == info["tail_cut"]
    assert set(view.sample_ids[~keep]) == want
    assert info["contradiction_rate_typical"] == 0.0 and info["contradiction_rate_atypical"] == pytest.approx(0.15)
    assert info["contradiction_fdr"] == pytest.approx(1 / 201 * 200 / 30)
    sel = select(table, methods=["coverage"], budget=100, seed=0, num_classes=4)  # rejected as the tail
    assert set(view.sample_ids[sel.reason == "coverage_tail"]) == want


def test_contradictions_as_common_on_typical_rows_are_kept(tmp_path):
    table, _ = _pool(tmp_path, contra_typical=25, contra_atypical=30)
    keep, _, info = cut_tail(ScoreView(table, num_classes=4), np.arange(400), 100, tail=None)
    assert info["contradiction_fdr"] == pytest.approx(26 / 201 * 200 / 30) and info["contradiction_fdr"] > 0.2
    assert info["contradiction_cut"] == 0 and keep.all()


def test_the_contradiction_cut_never_goes_below_the_budget_and_takes_the_most_atypical_first(tmp_path):
    table, want = _pool(tmp_path, contra_typical=0, contra_atypical=30)
    view = ScoreView(table, num_classes=4)
    keep, _, info = cut_tail(view, np.arange(400), 390, tail=None)
    assert info["contradiction_cut"] == 10 and keep.sum() == 390
    cut = np.flatnonzero(~keep)
    assert set(view.sample_ids[cut]) <= want


def test_without_embeddings_the_stage_is_skipped_and_recorded(tmp_path):
    table, _ = _pool(tmp_path, contra_typical=0, contra_atypical=30, embedding=False)
    keep, _, info = cut_tail(ScoreView(table, num_classes=4), np.arange(400), 100, tail=None)
    assert info["contradiction_cut"] == 0 and keep.all()
    assert any(s.startswith("tail_stage_contradictions") for s in info["skipped"])
