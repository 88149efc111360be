"""Reading back what the flows left on the test's Prefect server, and the environment of flow subprocesses."""

from __future__ import annotations

import os


def api(call):
    """Run one async Prefect client call against the harness server."""
    import asyncio

    from prefect.client.orchestration import get_client

    async def go():
        async with get_client() as client:
            return await call(client)

    return asyncio.run(go())


def artifacts(*, flow_run_id=None, key: str | None = None, limit: int = 50) -> list[dict]:
    """The artifacts the server holds (newest first), for one flow run and/or one key (the raw filter endpoint)."""
    flt = {}
    if flow_run_id is not None:
        flt["flow_run_id"] = {"any_": [str(flow_run_id)]}
    if key is not None:
        flt["key"] = {"any_": [key]}
    body = {"artifacts": flt, "limit": limit, "offset": 0, "sort": "CREATED_DESC"}

    async def call(client):
        r = await client._client.post("/artifacts/filter", json=body)
        r.raise_for_status()
        return r.json()

    return api(call)


def run_logs(flow_run_id, *, limit: int = 200) -> list[dict]:
    """The log records the server holds for one flow run and its task runs, oldest first (the API log
    handler flushed first: records are shipped in the background)."""
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()  # drains the shared worker: every handler's records
    body = {"logs": {"flow_run_id": {"any_": [str(flow_run_id)]}}, "limit": limit, "offset": 0,
            "sort": "TIMESTAMP_ASC"}

    async def call(client):
        r = await client._client.post("/logs/filter", json=body)
        r.raise_for_status()
        return r.json()

    return api(call)


def subproc_env(api_url: str, **extra) -> dict:
    """A flow subprocess's environment: the test server's API, no profile file of the harness."""
    env = dict(os.environ, PREFECT_API_URL=api_url, PYTHONWARNINGS="ignore", **extra)
    env.pop("PREFECT_PROFILES_PATH", None)
    return env
