"""Shared fixtures. One kdata cache per test session, so the built-in models train once."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# the suite's own cache, never the user's KDATA_CACHE (KDATA_TEST_CACHE reuses one across sessions); the
# xdist workers inherit it from the controller, so the built-in models train once per session
if not os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["KDATA_CACHE"] = os.environ.get("KDATA_TEST_CACHE") or tempfile.mkdtemp(prefix="kdata-test-cache-")
    _home = tempfile.mkdtemp(prefix="kdata-test-home-")  # what Prefect and matplotlib would write under ~
    os.environ["PREFECT_HOME"] = os.path.join(_home, "prefect")
    os.environ["MPLCONFIGDIR"] = os.path.join(_home, "matplotlib")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no test reaches a hub

# the tests' own model saves (tiny transformers written by helpers) keep their progress bars off the
# stderr that tests read; the same defaults `kdata`'s CLI sets for its process
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import torch  # noqa: E402

# torch threads per test process: the cores shared among the xdist workers (two workers on two cores,
# each with two threads, spin against each other), at most 2
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 1)
_THREADS = max(1, min(2, (os.cpu_count() or 1) // _WORKERS))
torch.set_num_threads(_THREADS)
os.environ.setdefault("OMP_NUM_THREADS", str(_THREADS))  # the CLI and flow subprocesses the tests start


@pytest.fixture(autouse=True)
def one_head_batch(monkeypatch):
    """While a cold run's decode workers start, the scoring process decodes batches itself until
    they draw their first task (``kdata.scoring.engine.HEAD_BATCHES`` at most). Tests pin that to
    one batch, so which process decodes which unit does not depend on how fast this machine starts
    them; ``tests/scoring/test_engine.py`` tests the unpinned head."""
    monkeypatch.setattr("kdata.scoring.engine.HEAD_BATCHES", 1)


@pytest.fixture(scope="session")
def builtin_models():
    """(teacher, student) built-in models, trained once per session."""
    from kdata.models.spec import load_model

    return load_model("builtin:digits-teacher"), load_model("builtin:digits-student")


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory, builtin_models) -> Path:
    """A curated dataset written by the pipeline on the embedded default (budget 0.3, kd3)."""
    from kdata.pipeline.config import RunOptions, SelectConfig
    from kdata.pipeline.run import run_select

    out = tmp_path_factory.mktemp("demo") / "out"
    run_select(SelectConfig(method="kd3", budget="0.3"), out=str(out), opts=RunOptions(device="cpu"))
    return out



@pytest.fixture
def warning_lines():
    """kdata's warnings printed as the CLI prints them (one ``kdata: warning:`` line on stderr each), for
    tests that call library functions and read stderr: ``pytestmark = pytest.mark.usefixtures(...)``."""
    from kdata.core.warn import shown_as_lines

    with shown_as_lines():
        yield
