"""One real Prefect server for every flow test of the session (``prefect_test_harness``)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def prefect_api():
    """One real Prefect server for the whole session; yields its API URL (for subprocesses)."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield PREFECT_API_URL.value()


@pytest.fixture(scope="module")
def pool_dir(tmp_path_factory, builtin_models) -> Path:
    """The built-in web pool as a directory of its 4 Parquet units (a copy per test module)."""
    from kdata.pools.spec import open_pool

    root = tmp_path_factory.mktemp("flowpool") / "pool"
    root.mkdir()
    for u in open_pool("builtin:digits-web").units:
        shutil.copy(u.path, root / Path(u.path).name)
    return root
