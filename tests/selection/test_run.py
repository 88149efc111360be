"""Budgets, top-k with seeded ties and class balance, and the select() accounting."""

import numpy as np
import pyarrow as pa
import pytest

from kdata.core.errors import KdataError
from kdata.selection.run import parse_budget, parse_methods, select
from kdata.selection.ranking import top_k


@pytest.mark.parametrize("text,n,expected", [("200", 1000, 200), ("0.3", 1000, 300), ("30%", 1000, 300),
                                             ("1.0", 1000, 1000), ("1", 1000, 1), ("100%", 7, 7), ("0.001", 10, 1)])
def test_parse_budget(text, n, expected):
    assert parse_budget(text, n) == expected


@pytest.mark.parametrize("text,match", [("0", "positive"), ("-3", "positive"), ("1001", "larger than the pool"),
                                        ("1.5", "at most 1.0"), ("abc", "expected a count"), ("0%", "positive")])
def test_parse_budget_rejects(text, match):
    with pytest.raises(KdataError, match=match):
        parse_budget(text, 1000)


def test_unknown_method():
    with pytest.raises(KdataError, match="unknown method 'nope'"):
        parse_methods("kd3,nope")


def test_top_k_ties_are_seeded_and_balance_spreads_budget():
    score = np.array([1.0, 1.0, 1.0, 0.5, 0.9, 0.1])
    a, b = top_k(score, 2, seed=0), top_k(score, 2, seed=0)
    assert list(a) == list(b) and set(a) <= {0, 1, 2}
    groups = np.array([0, 0, 0, 1, 1, 1])
    chosen = top_k(score, 4, seed=0, groups=groups)
    assert sorted(groups[chosen].tolist()) == [0, 0, 1, 1]
    assert {4, 3} <= set(chosen.tolist())
    # a group with too few rows gives its share away
    chosen = top_k(score, 5, seed=0, groups=np.array([0, 1, 1, 1, 1, 1]))
    assert len(chosen) == 5


def _scores(n=6):
    rng = np.random.default_rng(0)
    logits_t = rng.normal(size=(n, 3)).astype(np.float32)
    logits_s = rng.normal(size=(n, 3)).astype(np.float32)
    import torch

    from kdata.core.stats import disagreement

    st = disagreement(torch.from_numpy(logits_t), torch.from_numpy(logits_s), topk=3)
    cols = {"sample_id": [f"s{i}" for i in range(n)]}
    for k, v in st.items():
        v = v.numpy()
        cols[k] = [list(r) for r in v] if v.ndim == 2 else v
    cols["teacher_logits"] = [list(r) for r in logits_t]
    cols["student_logits"] = [list(r) for r in logits_s]
    return pa.table(cols)


def test_select_accounts_for_every_row():
    t = _scores(10)
    sel = select(t, methods=["teacher_confidence"], budget=4, seed=0, num_classes=3)
    assert sel.kept.sum() == 4
    assert all(r is None for r in sel.reason[sel.kept])
    assert all(r == "teacher_confidence_over_budget" for r in sel.reason[~sel.kept])
    conf = t.column("teacher_conf").to_numpy()
    assert set(np.flatnonzero(sel.kept)) == set(np.argsort(-conf)[:4])
    assert sorted(sel.rank[sel.kept].tolist()) == [0, 1, 2, 3]
