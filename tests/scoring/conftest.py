"""Fixtures of the scoring tests: a private score cache and a pair of exported models."""

import pytest

from kdata.models.spec import load_model
from tests.helpers.real_inputs import exported_models


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    """A fresh ``$KDATA_CACHE`` for one test."""
    monkeypatch.setenv("KDATA_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def models():
    """A ``.pt2`` teacher and a TorchScript student, exported in the test session."""
    m = exported_models()
    return load_model(m["teacher_pt2"]), load_model(m["student_pt"])
