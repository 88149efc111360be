"""One real Prefect server for every flow test of the session (``prefect_test_harness``)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def prefect_api():
    """One real Prefect server for the whole session; yields its API URL (for subprocesses)."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield PREFECT_API_URL.value()
