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
from contextlib import contextmanager

from kdata.core.errors import KdataError
from kdata.core.warn import shows_lines
from kdata.flows.inputs import check_api

DEFAULT_CONFIG = "flows/config.yaml"


DISTILL_PARAMS = ("student", "eval", "epochs", "seed", "device", "out", "keep_last")


def schedule(section: dict, *, where: str) -> dict:
    """The deployment's schedule from a section's ``cron`` and ``timezone``, checked as Prefect checks them
    (``CronSchedule``), so a bad value is one line naming ``where`` (file: section), the key and the value,
    before anything is served."""
    from prefect.client.schemas.schedules import CronSchedule

    cron, tz = section.get("cron"), section.get("timezone")
    if not cron:
        if tz:
            raise KdataError(f"{where}: timezone {tz!r} without cron: give cron too, or drop timezone")
        return {}
    try:
        CronSchedule(cron=cron)
    except ValueError:  # pydantic's ValidationError is one
        raise KdataError(f"{where}: cron {cron!r}: not a valid cron expression (minute hour day-of-month month "
                         "day-of-week, e.g. '0 3 * * *')") from None
    if not tz:
        return {"cron": cron}
    try:
        CronSchedule(cron=cron, timezone=tz)
    except ValueError:
        raise KdataError(f"{where}: timezone {tz!r}: unknown time zone (an IANA name such as UTC or "
                         "Europe/Berlin)") from None
    from prefect.schedules import Cron

    return {"schedule": Cron(cron, timezone=tz)}


def distill_params(data: dict) -> dict:
    """The distill flow's parameters from a loaded config: its ``distill:`` section, and by default the
    curate section's output pattern as ``data`` (the newest complete version)."""
    from kdata.flows.config import config_params

    d = data.get("distill") or {}
    return {**{k: d[k] for k in DISTILL_PARAMS if k in d}, "data": d.get("data", config_params(data)["out"])}


def deployments(config: str | os.PathLike) -> list:
    """The two RunnerDeployments (curate, distill) described by ``config`` (schedules checked)."""
    from kdata.flows import curate as curate_mod
    from kdata.flows import distill as distill_mod
    from kdata.flows.config import config_params, load_config

    data = load_config(config)
    params = config_params(data)
    c = data.get("curate") or {}
    d = dict(data.get("distill") or {})
    out = [curate_mod.curate.to_deployment(name=c.get("name", "nightly"), parameters=params,
                                           tags=["kdata"], **schedule(c, where=f"{config}: curate"))]
    if d.get("enabled", True):
        out.append(distill_mod.distill.to_deployment(name=d.get("name", "nightly"), parameters=distill_params(data),
                                                     tags=["kdata"], **schedule(d, where=f"{config}: distill")))
    return out


def check_inputs(config: str | os.PathLike, data: dict) -> None:
    """What ``python flows/curate.py --config`` and ``flows/distill.py`` check before a run
    (``kdata.flows.inputs.check_curate``, ``kdata.flows.distill.check_inputs``), for the config's two
    deployments: a config whose scheduled runs cannot work is one line naming the file and the section,
    before anything is served. A distill dataset the curate runs have not written yet is skipped (its
    student and eval set are still checked). Models are loaded uncached and dropped after (each run
    loads its own, in its own process)."""
    import gc

    from kdata.flows import distill as distill_mod
    from kdata.flows.config import config_params, expand_out, has_dataset, written_into
    from kdata.flows.inputs import check_curate, check_out
    from kdata.models.spec import load_model
    from kdata.pipeline.config import select_config

    params = config_params(data)
    cfg = select_config(dict(params["select"]), where=f"{config}: select")
    try:
        with _named(config, "curate: out"):
            check_out(expand_out(params["out"]), pool=cfg.pool, config_hash=cfg.hash())
        with _named(config, "select"):
            check_curate(params["select"], params["run"], params["out"], load=load_model)
        if (data.get("distill") or {}).get("enabled", True):
            p = distill_params(data)
            with _named(config, "distill"):
                feeds = written_into(params["out"], p["data"])
                if not feeds and not has_dataset(p["data"]):
                    raise KdataError(f"data {p['data']}: holds no curated dataset, and the curate flow writes "
                                     f"{params['out']}, which it does not name; leave data out to train on what "
                                     "curate writes")
                distill_mod.check_inputs(data=p["data"], student=p.get("student", distill_mod.IMAGE_STUDENT),
                                         eval=p.get("eval", distill_mod.IMAGE_EVAL), epochs=p.get("epochs"),
                                         seed=p.get("seed", 0), device=p.get("device", "auto"), out=p.get("out"),
                                         dataset_optional=feeds)
    finally:
        gc.collect()
        _release_gpu()


@contextmanager
def _named(config, section: str):
    """A KdataError raised inside, as one line naming the config file and its section."""
    try:
        yield
    except KdataError as exc:
        raise KdataError(f"{config}: {section}: {exc}", exit_code=exc.exit_code) from None


def _release_gpu() -> None:
    import torch

    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def serve_config(config: str | os.PathLike, *, limit: int | None = None) -> None:
    """Serve both deployments until interrupted (blocks), once the config has passed the checks a
    one-off run makes (``check_inputs``) and its schedules are valid."""
    from prefect import serve

    from kdata.flows.config import load_config

    data = load_config(config)
    deps = deployments(config)  # the schedules, checked before any model loads (and before any warning)
    if check_api() is None:
        print("kdata serve: warning: PREFECT_API_URL is not set, so the deployments live on a temporary server "
              "that ends with this process; for lasting schedules run `prefect server start` and set "
              "PREFECT_API_URL (docs/flows.md)", file=sys.stderr)
    runner = data.get("runner")
    if runner and runner.get("kind", "local") != "local":
        from kdata.flows.inputs import check_runner_ready

        check_runner_ready(runner, where=f"{config}: runner: address")
    check_inputs(config, data)
    if runner and runner.get("kind", "local") != "local":
        os.environ["KDATA_FLOW_RUNNER"] = json.dumps(runner)  # inherited by the flow-run subprocesses
    names = ", ".join(f"{dep.flow_name}/{dep.name}" for dep in deps)
    print(f"kdata serve: serving {names} (Ctrl-C stops)", file=sys.stderr)
    serve(*deps, limit=limit, print_starting_message=False)


@shows_lines
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
