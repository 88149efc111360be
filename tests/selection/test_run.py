"""Budgets, top-k with seeded ties and class balance, and the select() accounting."""

import numpy as np
import pyarrow as pa
import pytest

from kdata.core.errors import KdataError
from kdata.selection.run import parse_budget, parse_methods, select
from kdata.selection.ranking import top_k
from tests.helpers.methods import PS, kept_ids, scores_from_probs


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
    assert set(sel.stage) == {"teacher_confidence"}  # every row names the stage that decided it, kept ones too
    chained = select(t, methods=["kd3", "coverage"], budget=4, seed=0, num_classes=3)
    assert None not in set(chained.stage) and set(chained.stage[chained.kept]) == {"coverage"}


@pytest.mark.parametrize("budget", [-1, -200, 10.5, 10.0, "10", True, None])
def test_a_budget_that_is_not_a_row_count_is_one_line(budget):
    """A negative budget sliced from the end (budget -1 kept 199 of 200 rows); a float was a bare TypeError."""
    t = _scores(20)
    with pytest.raises(KdataError, match=r"^select: budget .*: must be an integer ≥ 0") as err:
        select(t, methods=["kd3"], budget=budget, num_classes=3)
    assert "\n" not in str(err.value)
    assert select(t, methods=["kd3"], budget=0, num_classes=3).kept.sum() == 0
    assert select(t, methods=["kd3"], budget=np.int64(5), num_classes=3).kept.sum() == 5
    assert select(t, methods=["kd3"], budget=50, num_classes=3).kept.sum() == 20  # more than the rows: all


def test_top_k_refuses_a_negative_or_fractional_k():
    score = np.arange(5.0)
    for k in (-1, 2.5):
        with pytest.raises(KdataError, match="must be an integer ≥ 0"):
            top_k(score, k, seed=0)
    assert top_k(score, 0, seed=0).tolist() == [] and top_k(score, 9, seed=0).tolist() == [4, 3, 2, 1, 0]


def _own_logits(n=200, c=10, *, label=False):
    rng = np.random.default_rng(0)
    tl = (rng.normal(size=(n, c)) * 3).astype(np.float32)
    sl = (tl + rng.normal(size=(n, c))).astype(np.float32)
    cols = {"sample_id": [f"s{i}" for i in range(n)], "teacher_logits": pa.array(list(tl)),
            "student_logits": pa.array(list(sl))}
    if label:
        cols["label_idx"] = pa.array(np.where(np.arange(n) % 3 == 0, -1, rng.integers(0, c, n)), pa.int32())
    return pa.table(cols)


@pytest.mark.parametrize("method", ["rad", "disagreement", "teacher_confidence", "student_entropy", "kd3",
                                    "coverage", "random"])
def test_select_on_your_own_logits_table_matches_the_loaded_scores(method, tmp_path):
    """The documented bring-your-own shape (sample_id, teacher_logits, student_logits) given straight to
    select(): the statistics are derived from the logits exactly as kdata.scoring.byo.load_scores
    derives them, so the kept rows are the same."""
    import pyarrow.parquet as pq

    from kdata.scoring.byo import load_scores

    own = _own_logits(label=True)
    pq.write_table(own, tmp_path / "p.parquet")
    loaded, c, _ = load_scores(str(tmp_path / "p.parquet"), temperature=2.0)
    for table in (own, loaded):
        assert "sample_id" in table.column_names
    a = select(own, methods=[method], budget=30, num_classes=c, temperature=2.0, seed=1)
    b = select(loaded, methods=[method], budget=30, num_classes=c, temperature=2.0, seed=1)
    assert a.kept.sum() == 30
    assert a.kept.tolist() == b.kept.tolist() and a.reason.tolist() == b.reason.tolist()
    for name, score in b.scores.items():
        np.testing.assert_allclose(a.scores[name], score, rtol=1e-5, atol=1e-6)


def test_the_view_derives_the_loaded_statistics_from_logits(tmp_path):
    import pyarrow.parquet as pq

    from kdata.scoring.byo import load_scores
    from kdata.selection.methods.view import LOGIT_DERIVED, ScoreView

    own = _own_logits(label=True)
    pq.write_table(own, tmp_path / "p.parquet")
    loaded, c, _ = load_scores(str(tmp_path / "p.parquet"), temperature=0.5)
    mine, ref = ScoreView(own, num_classes=c, temperature=0.5), ScoreView(loaded, num_classes=c, temperature=0.5)
    for name in LOGIT_DERIVED:
        assert mine.has(name)
        np.testing.assert_allclose(mine.col(name).astype(np.float64), ref.col(name).astype(np.float64),
                                   rtol=1e-5, atol=1e-6, equal_nan=True, err_msg=name)


def test_a_column_select_cannot_derive_is_one_line_naming_it():
    ids = [f"s{i}" for i in range(5)]
    topk_only = pa.table({"sample_id": ids, "teacher_topk_idx": pa.array([[0, 1]] * 5),
                          "teacher_topk_prob": pa.array([[0.6, 0.3]] * 5)})
    with pytest.raises(KdataError, match=r"^scores table: no column 'kl_ts' .*kdata\.scoring\.byo\.load_scores") as err:
        select(topk_only, methods=["disagreement"], budget=2, num_classes=3)
    assert "\n" not in str(err.value)
    no_ids = _own_logits(5).drop(["sample_id"])
    with pytest.raises(KdataError, match=r"^select: the scores table has no 'sample_id' column"):
        select(no_ids, methods=["rad"], budget=2, num_classes=10)


def test_select_refuses_an_option_the_method_does_not_take():
    t = _own_logits(20)
    with pytest.raises(KdataError, match=r"^select: options: kd3 has no option 'treshold' \(known: threshold, weight\)$"):
        select(t, methods=["kd3"], budget=5, num_classes=10, options={"kd3": {"treshold": 0.9}})
    # one mapping shared over several chains: entries for methods outside this chain are left alone
    sel = select(t, methods=["kd3"], budget=5, num_classes=10, options={"kd3": {"threshold": 0.0},
                                                                          "rad": {"teacher_error": 0.1}})
    assert sel.kept.sum() == 5 and sel.info["kd3"]["threshold"] == 0.0


def test_domain_balance_on_a_pool_without_domains_is_one_line():
    """A folder pool has a 'domain' column that is all null: --balance domain used to put every row in
    one group and record a balance that never happened."""
    t = _scores(10)
    empty = t.append_column("domain", pa.nulls(10, pa.string()))
    with pytest.raises(KdataError, match=r"--balance domain: no candidate has a domain"):
        select(empty, methods=["teacher_confidence"], budget=4, seed=0, num_classes=3, balance="domain")
    some = t.append_column("domain", pa.array(["a", None] * 5))
    sel = select(some, methods=["teacher_confidence"], budget=4, seed=0, num_classes=3, balance="domain")
    assert sel.kept.sum() == 4


def test_balance_class_spreads_budget_over_predicted_classes(tmp_path):
    # teacher predicts class 0 for s0..s2 (very confident) and class 1 for s3; top-2 by confidence
    # alone would take two class-0 rows, balance takes one of each
    pt = [[0.95, 0.05], [0.9, 0.1], [0.85, 0.15], [0.3, 0.7]]
    scores = scores_from_probs(tmp_path, pt, PS)
    plain = select(scores, methods=["teacher_confidence"], budget=2, seed=0, num_classes=2)
    assert kept_ids(scores, plain) == ["s0", "s1"]
    bal = select(scores, methods=["teacher_confidence"], budget=2, seed=0, num_classes=2, balance="class")
    assert bal.kept.sum() == 2 and bal.kept[3]


@pytest.mark.parametrize("method", ["rad", "kd3", "coverage", "teacher_confidence"])
def test_non_finite_logits_in_a_library_table_are_one_line(method):
    """rad raised IndexError and the rankers gave NaN scores; load_scores refuses them for a file."""
    import pyarrow as pa

    zt = np.random.default_rng(0).normal(size=(6, 3))
    zt[2, 1] = np.nan
    zt[4, 0] = np.inf
    table = pa.table({"sample_id": [f"r{i}" for i in range(6)], "teacher_logits": zt.tolist(),
                      "student_logits": np.zeros((6, 3)).tolist()})
    with pytest.raises(KdataError, match=r"^scores table: column 'teacher_logits' has a non-finite value "
                                         r"\(NaN/inf\) in row 2 \(sample_id 'r2'\) \(and 1 more rows\)$"):
        select(table, methods=[method], budget=3, seed=0, num_classes=3)
