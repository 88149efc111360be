"""HARD's search (``kdata.augment.search``): gradient or random search, as the models allow."""

from __future__ import annotations

from kdata.augment.params import HardConfig
from kdata.augment.search import GRADIENT, RANDOM_SEARCH, search_mode
from kdata.models.spec import Model


def test_search_mode_follows_the_models(builtin_models):
    teacher, student = builtin_models
    assert isinstance(teacher, Model)
    assert search_mode(HardConfig(), teacher, student) == (GRADIENT if teacher.differentiable and
                                                          student.differentiable else RANDOM_SEARCH)
    assert search_mode(HardConfig(random_search=True), teacher, student) == RANDOM_SEARCH
