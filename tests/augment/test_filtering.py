"""HARD's filters and accounting (``kdata.augment.filtering``): flips first, then the critic; the counts add up."""

from __future__ import annotations

import numpy as np
import pytest

from kdata.augment.filtering import CRITIC_REJECT, FLIP, check_generated_accounting, critic_filter, generated_counts


def test_flips_are_rejected_first_then_the_critic_decides_and_the_counts_add_up():
    flipped = np.array([True, False, False, False, True])
    parts = [{"score": np.array([0.9, 0.9]), "conf": np.array([1.0, 1.0])},
             {"score": np.array([0.2, 0.6, 0.1]), "conf": np.array([0.5, 0.5, 0.5])}]
    out = critic_filter(flipped, threshold=0.5, default_parts=parts)
    assert out.reason.tolist() == [FLIP, None, CRITIC_REJECT, None, FLIP]
    assert out.accepted.tolist() == [False, True, False, True, False]
    assert out.kind == "default" and out.threshold == 0.5 and set(out.components) == {"score", "conf"}
    counts = generated_counts(out, flipped, n_parents=5, skipped=1)
    assert counts == {"generated": 5, "generated_kept": 2, "generated_rejected": 3,
                      "generated_rejected_by_reason": {FLIP: 2, CRITIC_REJECT: 1},
                      "hard_parents": 5, "hard_parents_skipped": 1}
    with pytest.raises(RuntimeError, match="do not add up"):
        check_generated_accounting({**counts, "generated_rejected_by_reason": {FLIP: 2}})


def test_a_trained_critic_never_runs_when_every_row_flipped():
    def table():
        raise AssertionError("the scores table must not be built")

    out = critic_filter(np.array([True, True]), threshold=0.5, default_parts=[], critic="some/dir", scores_table=table)
    assert out.reason.tolist() == [FLIP, FLIP] and out.threshold is None and np.isnan(out.score).all()
