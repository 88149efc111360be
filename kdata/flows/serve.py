"""Serve the ``curate`` and ``distill`` flows as deployments with cron schedules from a config.

    prefect server start                       # schedules need a real server (not the temporary one)
    export PREFECT_API_URL=http://127.0.0.1:4200/api
    kdata serve --config flows/config.yaml     # or: python flows/serve.py --config flows/config.yaml
    prefect deployment run curate/nightly      # trigger one run now; watch it at http://127.0.0.1:4200

The process stays up, polls the server for scheduled or triggered runs of both deployments and
runs each in a subprocess. A ``runner:`` section in the config (``kind: dask`` with ``address`` or
``workers``) is handed to those runs through ``KDATA_FLOW_RUNNER``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from kdata.core.errors import KdataError
from kdata.flows.inputs import check_api

DEFAULT_CONFIG = "flows/config.yaml"


def _schedule(section: dict) -> dict:
    out = {}
    if section.get("cron"):
        out["cron"] = section["cron"]
        if section.get("timezone"):
            from prefect.schedules import Cron

            out = {"schedule": Cron(section["cron"], timezone=section["timezone"])}
    return out


def deployments(config: str | os.PathLike) -> list:
    """The two RunnerDeployments (curate, distill) described by ``config``."""
    from kdata.flows import curate as curate_mod
    from kdata.flows import distill as distill_mod
    from kdata.flows.config import config_params, load_config

    data = load_config(config)
    params = config_params(data)
    c = data.get("curate") or {}
    d = dict(data.get("distill") or {})
    out = [curate_mod.curate.to_deployment(name=c.get("name", "nightly"), parameters=params,
                                           tags=["kdata"], **_schedule(c))]
    if d.get("enabled", True):
        dparams = {k: d[k] for k in ("student", "eval", "epochs", "seed", "device", "out") if k in d}
        dparams["data"] = d.get("data", params["out"])  # curate's output pattern: its newest complete version
        out.append(distill_mod.distill.to_deployment(name=d.get("name", "nightly"), parameters=dparams,
                                                     tags=["kdata"], **_schedule(d)))
    return out


def serve_config(config: str | os.PathLike, *, limit: int | None = None) -> None:
    """Serve both deployments until interrupted (blocks)."""
    from prefect import serve

    from kdata.flows.config import load_config

    if check_api() is None:
        print("kdata serve: warning: PREFECT_API_URL is not set, so the deployments live on a temporary server "
              "that ends with this process; for lasting schedules run `prefect server start` and set "
              "PREFECT_API_URL (docs/flows.md)", file=sys.stderr)

    runner = load_config(config).get("runner")
    if runner and runner.get("kind", "local") != "local":
        from kdata.flows.inputs import check_runner_ready

        check_runner_ready(runner, where=f"{config}: runner: address")
        os.environ["KDATA_FLOW_RUNNER"] = json.dumps(runner)  # inherited by the flow-run subprocesses
    deps = deployments(config)
    names = ", ".join(f"{dep.flow_name}/{dep.name}" for dep in deps)
    print(f"kdata serve: serving {names} (Ctrl-C stops)", file=sys.stderr)
    serve(*deps, limit=limit, print_starting_message=False)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="flows/serve.py", description="Serve the kdata flows with cron schedules.")
    p.add_argument("--config", default=DEFAULT_CONFIG)
    p.add_argument("--limit", type=int, default=None, help="maximum concurrent flow runs")
    a = p.parse_args(argv)
    try:
        serve_config(a.config, limit=a.limit)
    except KdataError as exc:
        print(f"serve: error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
