"""Invariants of every ranker (hypothesis): budget honoured exactly, kept/rejected disjoint and
complete, determinism under a seed, invariance to the order of the rows."""

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kdata.selection.run import select
from tests.helpers.methods import random_scores

RANKERS = ["random", "teacher_confidence", "student_entropy", "disagreement", "kd3", "rad", "miniplm", "ddk"]
SETTINGS = settings(max_examples=12, deadline=None, derandomize=True,  # the same examples on every run and machine
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.mark.parametrize("method", RANKERS)
@SETTINGS
@given(n=st.integers(1, 40), c=st.integers(2, 6), frac=st.floats(0.0, 1.0), data_seed=st.integers(0, 2**31),
       seed=st.integers(0, 1000))
def test_ranker_invariants(tmp_path, method, n, c, frac, data_seed, seed):
    rng = np.random.default_rng(data_seed)
    scores = random_scores(tmp_path, rng, n, c, name=f"{method}.parquet")
    budget = max(1, int(round(frac * n)))
    sel = select(scores, methods=[method], budget=budget, seed=seed, num_classes=c)
    # budget honoured exactly; every row either kept (no reason) or rejected (with a reason)
    assert int(sel.kept.sum()) == budget
    has_reason = np.array([r is not None for r in sel.reason])
    assert not (sel.kept & has_reason).any()
    assert (sel.kept | has_reason).all()
    assert sorted(sel.rank[sel.kept].tolist()) == list(range(budget))
    # deterministic under the seed
    again = select(scores, methods=[method], budget=budget, seed=seed, num_classes=c)
    np.testing.assert_array_equal(sel.kept, again.kept)
    # invariant to row order: the same sample ids are kept
    perm = rng.permutation(n)
    shuffled = scores.take(pa.array(perm))
    sel2 = select(shuffled, methods=[method], budget=budget, seed=seed, num_classes=c)
    ids = np.array(scores.column("sample_id").to_pylist())
    ids2 = np.array(shuffled.column("sample_id").to_pylist())
    assert sorted(ids[sel.kept]) == sorted(ids2[sel2.kept])


@SETTINGS
@given(n=st.integers(2, 40), data_seed=st.integers(0, 2**31), threshold=st.floats(0.2, 0.9))
def test_filter_then_ranker_chain_invariants(tmp_path, n, data_seed, threshold):
    """kd3 with a threshold acts as a filter stage before rad; reasons name the stage."""
    rng = np.random.default_rng(data_seed)
    scores = random_scores(tmp_path, rng, n, 3, name="chain.parquet")
    budget = max(1, n // 3)
    sel = select(scores, methods=["kd3", "rad"], budget=budget, seed=1, num_classes=3,
                 options={"kd3": {"threshold": threshold}})
    low = sel.reason == "kd3_low_confidence"
    assert not (sel.kept & low).any()
    alive = int((~low).sum())
    assert int(sel.kept.sum()) == min(budget, alive)
    over = sel.reason == "rad_over_budget"
    assert (sel.stage[low] == "kd3").all() and (sel.stage[over] == "rad").all()
    assert int(sel.kept.sum() + low.sum() + over.sum()) == n
