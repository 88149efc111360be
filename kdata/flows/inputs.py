"""What the flow entry points (``flows/curate.py``, ``flows/distill.py``, ``flows/generate.py``) check
before any flow run starts, so bad input is one line and exit 2, never a Prefect traceback: the
Prefect API, the task runner (a Dask scheduler that answers), the curate options, OUT, the pool's
Parquet files and bring-your-own predictions.

No Prefect import at module level (``check_api`` reads Prefect's settings when called); the flows
import these, never the other way round.
"""

from __future__ import annotations

import os
from pathlib import Path

from kdata.core.errors import KdataError
from kdata.flows.config import check_runner, expand_out


def check_api(*, timeout: float = 5.0) -> str | None:
    """The Prefect API the flows (and ``kdata serve``'s deployments) will use, checked before any
    flow run: an address where no server answers is one line naming it; None when none is set
    (Prefect then starts a temporary server that lives only as long as this process)."""
    import httpx
    from prefect.settings import PREFECT_API_URL

    url = os.environ.get("PREFECT_API_URL") or PREFECT_API_URL.value()
    if not url:
        return None
    try:
        httpx.get(url.rstrip("/") + "/health", timeout=timeout).raise_for_status()
    except httpx.HTTPError as exc:
        raise KdataError(f"PREFECT_API_URL {url}: no Prefect server answers there ({type(exc).__name__}); start one "
                         "with `prefect server start`, or unset PREFECT_API_URL") from None
    return url


def probe_dask(address: str, *, where: str = "--address", timeout: float = 5.0) -> None:
    """A Dask scheduler must listen at ``address`` (a TCP connect, at most ``timeout`` s), else one line
    naming it — instead of Dask's 30 s of retries and a traceback inside the flow run."""
    import socket

    from distributed.comm.addressing import parse_address, parse_host_port

    try:
        scheme, loc = parse_address(address)
        host, port = parse_host_port(loc, default_port=8786)
    except (ValueError, TypeError) as exc:
        raise KdataError(f"{where} {address}: not a Dask scheduler address ({exc}); e.g. tcp://host:8786") from None
    if scheme not in ("tcp", "tls"):
        return  # inproc://, ucx://…: Dask checks those itself
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise KdataError(f"{where} {address}: no Dask scheduler answers there ({why}); start one (`dask scheduler`) "
                         "or leave the address out for a LocalCluster") from None


def check_runner_ready(runner: dict, *, where: str = "--address") -> dict:
    """``runner`` checked (``kdata.flows.config.check_runner``) and its Dask scheduler probed."""
    check_runner(runner, where="runner")
    if runner.get("kind") == "dask" and runner.get("address"):
        probe_dask(runner["address"], where=where)
    return runner


def runner_from_args(args, data: dict, *, config: str | None = None) -> dict:
    """The task runner of a one-off curate run: the config's ``runner:`` section, overridden by
    ``--runner``/``--address``/``--dask-workers`` (either of the last two means Dask). Checked, the
    scheduler probed, before any flow run."""
    runner = dict(data.get("runner") or {})
    workers, address = args.dask_workers, args.address
    if workers is not None and workers < 1:
        raise KdataError(f"--dask-workers {workers}: must be at least 1")
    if address is not None and workers is not None:
        raise KdataError("--address and --dask-workers: give one (an existing Dask cluster, or a LocalCluster "
                         "of N workers)")
    if args.runner == "local" and (address is not None or workers is not None):
        raise KdataError(f"{'--address' if address is not None else '--dask-workers'} is a Dask option: "
                         "use --runner dask (or leave --runner out)")
    if args.runner:
        runner["kind"] = args.runner
    elif address is not None or workers is not None:
        runner["kind"] = "dask"
    if address is not None:
        runner.pop("workers", None)
        runner["address"] = address
    if workers is not None:
        runner.pop("address", None)
        runner["workers"] = workers
    from_file = address is None and config is not None
    return check_runner_ready(runner, where=f"{config}: runner: address" if from_file else "--address")


def select_and_run(args, data: dict, *, where: str) -> tuple[dict, dict]:
    """The curate flow's ``select`` and ``run`` parameters: the config file's ``select:``/``run:``
    sections (already checked by ``load_config``), overridden by the options given on the command line."""
    from kdata.pipeline.arguments import given_values
    from kdata.pipeline.config import RunOptions, SelectConfig, canonical_names, run_options, select_config

    sel = {**canonical_names(SelectConfig, dict(data.get("select") or {}), where=where),
           **given_values(args, SelectConfig)}
    run = {**canonical_names(RunOptions, dict(data.get("run") or {}), where=where), **given_values(args, RunOptions)}
    if getattr(args, "no_cache", False):
        run["cache"] = False
    opts = run_options(run, where=where)
    return select_config(sel, where=where).to_dict(), {
        "device": opts.device, "batch_size": opts.batch_size, "num_workers": opts.num_workers, "cache": opts.cache,
        "card_dir": opts.card_dir, "trust_remote_code": opts.trust_remote_code}


def check_parquet_units(pool) -> None:
    """Read every Parquet unit's footer, as ``kdata select`` does before scoring: a file that is not
    Parquet (or is truncated) is one line naming it. Its rows cannot be counted, so quarantining it
    would misstate the input."""
    import pyarrow.parquet as pq

    for u in pool.units:
        if u.path and str(u.path).endswith(".parquet"):
            try:
                pq.read_metadata(u.path)
            except Exception as exc:  # noqa: BLE001  (not Parquet, truncated…: one line naming the file)
                raise KdataError(f"{u.path}: cannot read Parquet ({str(exc).splitlines()[0]})") from None


def check_out(out: str, *, pool: str | None, config_hash: str) -> None:
    """OUT outside the pool, and empty, absent or holding this very run (verified), checked under
    OUT's lock, taken just for the check (``kdata.dataset.writer.check_output_dir``)."""
    from kdata.core.lock import exclusive
    from kdata.dataset.writer import check_output_dir
    from kdata.pipeline.output import check_out_outside_pool

    check_out_outside_pool(out, pool)
    if os.path.lexists(out):  # absent: nothing to check, and no lock file (nor parent directory) made
        with exclusive(out):
            check_output_dir(out, config_hash=config_hash)


def check_curate(select: dict, run: dict, out: str, *, load) -> None:
    """Every curate check that needs no scoring: the options, OUT, bring-your-own predictions (loaded
    and checked as ``kdata select --scores`` loads them), the pool (every Parquet footer) and the
    models (``load``: the flow's per-process model cache, which its tasks then reuse)."""
    from kdata.pipeline.config import run_options, select_config
    from kdata.pipeline.prepare import prepare

    cfg = select_config(dict(select), where="flow parameter select")
    opts = run_options(dict(run or {}), where="flow parameter run")
    if cfg.scores and not Path(cfg.scores).is_file():
        raise KdataError(f"{cfg.scores}: no such predictions file (--scores)")
    check_out(expand_out(out), pool=cfg.pool, config_hash=cfg.hash())
    prep = prepare(cfg, opts=opts, load=load)
    if prep.byo is None:
        check_parquet_units(prep.pool)
