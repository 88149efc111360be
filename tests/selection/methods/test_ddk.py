"""DDK (kdata.selection.methods.ddk): the domain allocation by hand and its refusals."""

from __future__ import annotations

import numpy as np
import pytest

from kdata.core.errors import KdataError
from kdata.selection.methods.ddk import allocate, domain_proportions
from kdata.selection.run import select
from tests.helpers.methods import PS, PT, kept_ids, scores_from_probs


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


def test_ddk_refuses_a_domain_column_with_no_domain_in_it(tmp_path):
    """A JSONL pool without domains gives an all-null column: ddk ran as one domain (= disagreement)."""
    scores = scores_from_probs(tmp_path, PT, PS, domain=[None] * 4)
    with pytest.raises(KdataError, match=r"^ddk: needs a 'domain' column .*; every row's domain is empty$"):
        select(scores, methods=["ddk"], budget=2, seed=0, num_classes=2)
