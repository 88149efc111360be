"""Teacher and student must agree on what each logit means: a class name at two positions, or two named
lists that differ, is refused before anything is scored; an unnamed side is taken in index order."""

from __future__ import annotations

import copy

import pytest

from kdata.core.errors import KdataError
from kdata.core.warn import KdataWarning, shown_as_lines
from kdata.models.spec import load_model
from kdata.scoring.score import check_models


@pytest.fixture(scope="module")
def models(builtin_models):
    return load_model("builtin:digits-teacher"), load_model("builtin:digits-student")


def named(model, names):
    m = copy.copy(model)
    m.class_names = list(names)
    return m


def test_a_class_at_another_logit_is_refused(models):
    t, s = models
    swapped = ["1", "0", *map(str, range(2, 9)), "nine"]  # not a reordering of the same set, still misaligned
    with pytest.raises(KdataError, match=r"class '0' is logit 0 of teacher .* but logit 1 of student"):
        check_models(t, named(s, swapped))
    with pytest.raises(KdataError, match="class order differs"):
        check_models(t, named(s, [*map(str, range(1, 10)), "0"]))


def test_two_named_lists_that_differ_are_refused(models):
    t, s = models
    with pytest.raises(KdataError, match=r"calls logit 0 'cat', student .* calls it 'chat'"):
        check_models(named(t, ["cat", *"bcdefghij"]), named(s, ["chat", *"bcdefghij"]))


def test_an_unnamed_side_is_taken_in_index_order(models, capsys):
    t, s = models
    check_models(named(t, [f"LABEL_{i}" for i in range(10)]), s)  # both unnamed: silent
    assert capsys.readouterr().err == ""
    with pytest.warns(KdataWarning, match="name their classes differently"):
        check_models(named(t, list("abcdefghij")), s)  # one side declares none: accepted, said once
    with shown_as_lines():
        check_models(named(t, list("abcdefghij")), s)
    assert "name their classes differently (logit 0: 'a' and '0')" in capsys.readouterr().err
