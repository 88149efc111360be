"""Tiny hand-computed cases per method: the expected selection is written in the test."""

import numpy as np
import pytest

from kdata.core.errors import KdataError
from kdata.selection.methods.ddk import allocate, domain_proportions
from kdata.selection.methods.kd3 import kd3_score, kd3_select
from kdata.selection.methods.rad import rad_probabilities
from kdata.selection.prn import order_sample
from kdata.selection.run import select
from tests.helpers.methods import scores_from_probs

# rows s0..s3, two classes
PT = [[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.1, 0.9]]
PS = [[0.8, 0.2], [0.2, 0.8], [0.6, 0.4], [0.05, 0.95]]
# combined confidence max((pT + pS)/2): s0 .85, s1 .55 (they disagree), s2 .60, s3 .925


def kept_ids(scores, sel):
    ids = np.array(scores.column("sample_id").to_pylist())
    return sorted(ids[sel.kept].tolist())


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


def test_rad_probabilities_by_hand():
    # perfect teacher (k = 0): plain top-b uncertainty sampling
    p, t = rad_probabilities(np.array([1.0, 0.8, 0.5, 0.1]), 2, mistakes=0.0)
    np.testing.assert_allclose(p, [1, 1, 0, 0])
    # k = 0.5 mistakes, b = 1: V = b (m − k) / H_m is best at m = 3 (0.833 > 0.75 > 0.5): p = 1/3 each
    p, t = rad_probabilities(np.array([1.0, 1.0, 1.0, 0.1]), 1, mistakes=0.5)
    np.testing.assert_allclose(p, [1 / 3, 1 / 3, 1 / 3, 0], atol=1e-12)
    assert t == pytest.approx(1 / 3)


def test_order_sample_exact_size_and_certain_points():
    p = np.array([1.0, 0.5, 0.5, 0.0, 1.0])
    for seed in range(20):
        u = np.random.default_rng(seed).random(5)
        got = order_sample(p, 3, u=u)
        assert len(got) == 3 and {0, 4} <= set(got.tolist()) and 3 not in got


def test_rad_method_reports_teacher_queries(tmp_path):
    # student margins: s0 .6, s1 .6, s2 .2, s3 .9 → gains .4 .4 .8 .1; with teacher_error 0 → top-2 gains
    scores = scores_from_probs(tmp_path, PT, PS)
    sel = select(scores, methods=["rad"], budget=2, seed=0, num_classes=2, options={"rad": {"teacher_error": 0.0}})
    assert sel.kept.sum() == 2 and sel.kept[2]  # s2 (the most uncertain) always queried
    assert sel.info["rad"]["teacher_queries"] == 2


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


def test_ddk_allocation_by_hand(tmp_path):
    np.testing.assert_array_equal(allocate(10, np.array([0.5, 0.3, 0.2]), np.array([2, 10, 10])), [2, 5, 3])
    np.testing.assert_allclose(domain_proportions(np.array([0.0, 0.0])), [0.5, 0.5])
    # domain x: student far from teacher (ψ ≈ 7.2), domain y: close (ψ ≈ 1): r ≈ [.75, .25]
    pt = [[0.8, 0.2]] * 6
    ps = [[0.2, 0.8], [0.2, 0.8], [0.2, 0.8], [0.8, 0.2], [0.7, 0.3], [0.75, 0.25]]
    scores = scores_from_probs(tmp_path, pt, ps, domain=["x", "x", "x", "y", "y", "y"])
    sel = select(scores, methods=["ddk"], budget=4, seed=0, num_classes=2)
    assert kept_ids(scores, sel) == ["s0", "s1", "s2", "s4"]  # 3 from x, the highest-KL row of y
    d = sel.info["ddk"]["domains"]
    assert d["x"]["quota"] == 3 and d["y"]["quota"] == 1


def test_ddk_needs_a_domain(tmp_path):
    scores = scores_from_probs(tmp_path, PT, PS)
    with pytest.raises(KdataError, match="domain"):
        select(scores, methods=["ddk"], budget=2, seed=0, num_classes=2)


def test_balance_class_spreads_budget_over_predicted_classes(tmp_path):
    # teacher predicts class 0 for s0..s2 (very confident) and class 1 for s3; top-2 by confidence
    # alone would take two class-0 rows, balance takes one of each
    pt = [[0.95, 0.05], [0.9, 0.1], [0.85, 0.15], [0.3, 0.7]]
    scores = scores_from_probs(tmp_path, pt, PS)
    plain = select(scores, methods=["teacher_confidence"], budget=2, seed=0, num_classes=2)
    assert kept_ids(scores, plain) == ["s0", "s1"]
    bal = select(scores, methods=["teacher_confidence"], budget=2, seed=0, num_classes=2, balance="class")
    assert bal.kept.sum() == 2 and bal.kept[3]


def test_topk_fast_paths_match_dense_reconstruction(tmp_path):
    """With only top-k soft labels (C > 64), kd3/miniplm/ddk use O(N·k) paths equal to the dense ones."""
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


def _lp_value(g, b, k):
    """max_p min_z Σ p g (1 − z) as a linear program: max Σ p g − k t − Σ s, s_i ≥ p_i g_i − t."""
    from scipy.optimize import linprog

    n = len(g)
    c = np.concatenate([-g, np.ones(n), [k]])
    a_ub = np.zeros((n, 2 * n + 1))
    a_ub[np.arange(n), np.arange(n)] = g
    a_ub[np.arange(n), n + np.arange(n)] = -1.0
    a_ub[:, -1] = -1.0
    a_eq = np.concatenate([np.ones(n), np.zeros(n + 1)])[None]
    res = linprog(c, A_ub=a_ub, b_ub=np.zeros(n), A_eq=a_eq, b_eq=[b],
                  bounds=[(0, 1)] * n + [(0, None)] * (n + 1))
    return -res.fun


def _game_value(p, g, k):
    v = np.sort(p * g)[::-1]
    whole = int(np.floor(k))
    return float(v.sum() - v[:whole].sum() - (v[whole] * (k - whole) if whole < len(v) else 0.0))


def test_rad_probabilities_reach_the_linear_programs_optimum():
    """The level search missed t = (b − j)/H_a (leftover mass on one more point): up to 0.053 short at n = 9."""
    rng = np.random.default_rng(1)
    for trial in range(120):
        n = int(rng.integers(3, 30))
        b = int(rng.integers(1, n))
        k = float(rng.uniform(0, b))
        g = rng.uniform(0.01, 1, size=n)
        if trial % 3 == 0:
            g = np.round(g, 1) + 0.01  # ties
        p, _ = rad_probabilities(g, b, mistakes=k)
        assert p.sum() == pytest.approx(b) and p.min() >= -1e-12 and p.max() <= 1 + 1e-12
        assert _game_value(p, g, k) == pytest.approx(_lp_value(g, b, k), abs=1e-7), (n, b, k)


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


def test_ddk_refuses_a_domain_column_with_no_domain_in_it(tmp_path):
    """A JSONL pool without domains gives an all-null column: ddk ran as one domain (= disagreement)."""
    scores = scores_from_probs(tmp_path, PT, PS, domain=[None] * 4)
    with pytest.raises(KdataError, match=r"^ddk: needs a 'domain' column .*; every row's domain is empty$"):
        select(scores, methods=["ddk"], budget=2, seed=0, num_classes=2)
