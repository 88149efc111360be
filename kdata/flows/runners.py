"""Task runners of the flows (Prefect's default thread pool, or Dask: a scheduler address or a
LocalCluster) and their retry rule."""

from __future__ import annotations

import json
import os

from kdata.core.errors import KdataError


def retryable(state) -> bool:
    """Retry I/O and unexpected errors, not bad input (``KdataError``): that fails the same way again."""
    try:
        state.result()
    except KdataError:
        return False
    except Exception:
        return True
    return False


def task_runner(kind: str = "local", *, address: str | None = None, workers: int | None = None,
                threads_per_worker: int = 1, gpus_per_worker: int = 0):
    """``local`` (Prefect's default thread pool) or ``dask``: an existing scheduler at ``address``
    or a LocalCluster of ``workers`` processes; ``gpus_per_worker`` advertises a ``GPU`` resource."""
    if kind in (None, "", "local"):
        return None
    if kind != "dask":
        raise KdataError(f"unknown runner '{kind}' (local or dask)")
    from prefect_dask import DaskTaskRunner

    if address:
        return DaskTaskRunner(address=address)
    kwargs = {"n_workers": workers or 2, "threads_per_worker": threads_per_worker, "processes": True}
    if gpus_per_worker:
        kwargs["resources"] = {"GPU": gpus_per_worker}
    return DaskTaskRunner(cluster_kwargs=kwargs)


def env_runner():
    """``KDATA_FLOW_RUNNER`` (JSON {kind, address, workers}) picks the task runner of served runs."""
    raw = os.environ.get("KDATA_FLOW_RUNNER")
    if not raw:
        return None
    spec = json.loads(raw)
    return task_runner(spec.pop("kind", "local"), **spec)
