"""The ``curate`` Prefect flow: prepare → score (one cached task per pool unit) → finish.

It calls the same stage functions as ``kdata select`` (``kdata.pipeline.prepare``,
``kdata.score.score_unit``, ``kdata.pipeline.finish``); nothing here re-implements selection or
writing. Tasks pass unit names, paths and content hashes, never tables or models: each task
loads the models itself (through a per-process cache keyed by spec + checksum).

Scoring tasks are cached by Prefect on (unit fingerprint, model checksums, scoring config,
kdata version), so a rerun after a crash, or a nightly run over a pool that only grew, shows
every unchanged unit as a ``Cached`` task and scores only new units. Prefect's cache records and
results live under ``$KDATA_CACHE/prefect-results`` next to the score files they point at.

A unit that keeps failing is quarantined with its error (its rows count as ``quarantined``) and
the flow finishes with the rest. Run once from a shell with the options of ``kdata select``::

    python flows/curate.py --pool builtin:digits-web --out runs/v1 --method kd3
    python flows/curate.py --config flows/config.yaml
    python flows/curate.py --pool DIR --out OUT --runner dask --dask-workers 2
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.tasks import exponential_backoff

from kdata.core.version import __version__
from kdata.core.errors import KdataError

if __name__ != "__main__":
    # flows/ is a directory of scripts loaded by path: ship this module's code to Dask workers by
    # value, since they cannot import it by name
    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])

# ------------------------------------------------------------------------------------------------
# Config

RUN_KEYS = ("device", "batch_size", "num_workers", "cache")


def load_config(path: str | os.PathLike) -> dict:
    """Read a flow config YAML (see ``flows/config.yaml``); a bad file is one KdataError line."""
    import yaml

    p = Path(path)
    if not p.exists():
        raise KdataError(f"{p}: config file not found")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise KdataError(f"{p}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise KdataError(f"{p}: expected a mapping at the top level")
    from kdata.pipeline.run import SelectConfig

    known = {f.name for f in dataclasses.fields(SelectConfig)}
    bad = sorted(set(data.get("select") or {}) - known)
    if bad:
        raise KdataError(f"{p}: unknown select option(s) {bad}; known: {sorted(known)}")
    return data


def expand_out(out: str, *, now: datetime | None = None) -> str:
    """``{version}`` in OUT becomes a UTC timestamp, so each scheduled run writes a new dataset version."""
    now = now or datetime.now(timezone.utc)
    return out.replace("{version}", now.strftime("%Y%m%dT%H%M%SZ"))


# ------------------------------------------------------------------------------------------------
# Per-process caches: models (spec, device, checksum) and the test hook

_MODELS: dict = {}


def _model(spec: str, *, device, checksum: str | None):
    from kdata.models.spec import load_model

    key = (spec, str(device))
    m = _MODELS.get(key)
    if m is None or (checksum and m.checksum != checksum):
        m = load_model(spec, device=device)
        if checksum and m.checksum != checksum:
            raise KdataError(f"{spec}: model changed while the flow ran (checksum {m.checksum[:12]} != {checksum[:12]})")
        _MODELS[key] = m
    return m


def _select_config(select: dict):
    from kdata.pipeline.run import SelectConfig

    return SelectConfig(**select)


def _run_options(run: dict):
    from kdata.pipeline.run import RunOptions

    return RunOptions(**{k: v for k, v in (run or {}).items() if k in RUN_KEYS})


# ------------------------------------------------------------------------------------------------
# Tasks

@task(name="prepare", retries=2, retry_delay_seconds=exponential_backoff(backoff_factor=1),
      retry_condition_fn=lambda task, run, state: _retryable(state))
def prepare_task(select: dict, out: str, run: dict) -> dict:
    """Check OUT, open the pool, load the models: returns unit names/paths/fingerprints and checksums."""
    from kdata.pipeline.run import prepare
    from kdata.dataset.writer import check_output_dir, read_manifest

    cfg = _select_config(select)
    if check_output_dir(out, config_hash=cfg.hash()) == "done":
        return {"done": True, "manifest": read_manifest(out)}
    prep = prepare(cfg, opts=_run_options(run))
    for m in (prep.teacher, prep.student):
        _MODELS[(m.spec, str(prep.device))] = m
    units = [{"name": u.name, "path": u.path, "fingerprint": u.fingerprint()} for u in prep.pool.units]
    return {"done": False, "units": units, "device": str(prep.device),
            "checksums": {"teacher": prep.teacher.checksum, "student": prep.student.checksum},
            "score_config": dataclasses.asdict(prep.score_cfg), "methods": prep.methods}


def score_cache_key(context, parameters: dict) -> str:
    """Prefect cache key of a scoring task: unit content, model checksums, scoring config, kdata version."""
    from kdata.scoring.score import ScoreConfig

    payload = {"unit": parameters["unit"]["fingerprint"], "models": parameters["checksums"],
               "config": ScoreConfig(**parameters["score_config"]).key(), "kdata": __version__}
    return "kdata-score-" + hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]


def _retryable(state) -> bool:
    """Retry I/O and unexpected errors, not bad input (``KdataError``): that fails the same way again."""
    try:
        state.result()
    except KdataError:
        return False
    except Exception:
        return True
    return False


def _result_storage() -> Path:
    """Where Prefect keeps scoring results and cache records: beside the score files they name."""
    from kdata.core.paths import cache_dir

    return cache_dir("prefect-results")


@task(name="score-unit", cache_key_fn=score_cache_key, persist_result=True,
      retries=2, retry_delay_seconds=exponential_backoff(backoff_factor=1),
      retry_condition_fn=lambda task, run, state: _retryable(state))
def score_unit_task(select: dict, unit: dict, checksums: dict, score_config: dict, device: str,
                    cache: bool = True) -> dict:
    """Score one pool unit into the per-unit score cache; returns its path, quarantine list and row count."""
    from kdata.pools.spec import open_pool
    from kdata.scoring.score import ScoreConfig, score_unit

    if os.environ.get("KDATA_FLOW_FAIL_UNIT") and unit["name"] == os.environ["KDATA_FLOW_FAIL_UNIT"]:
        raise OSError(f"{unit['name']}: injected failure (KDATA_FLOW_FAIL_UNIT)")
    pool = open_pool(select["pool"])
    found = [u for u in pool.units if u.name == unit["name"]]
    if not found:
        raise KdataError(f"{select['pool']}: unit {unit['name']} disappeared while the flow ran")
    u = found[0]
    fp = u.fingerprint()
    if fp != unit["fingerprint"]:
        raise KdataError(f"{unit['name']}: changed while the flow ran (content hash differs)")
    u = dataclasses.replace(u, fingerprint=lambda: fp)
    teacher = _model(select["teacher"], device=device, checksum=checksums["teacher"])
    student = _model(select["student"], device=device, checksum=checksums["student"])
    path, quarantined, n_in, hit = score_unit(u, teacher, student, config=ScoreConfig(**score_config),
                                              device=device, cache=cache)
    return {"unit": unit["name"], "path": str(path), "quarantined": [list(q) for q in quarantined],
            "n_in": n_in, "score_cache_hit": hit}


def unit_quarantine(unit: dict, error: str) -> list[tuple[str, str]]:
    """The (sample_id, error) records of a unit that could not be scored.

    Its sample ids when the Parquet file still yields them, else ``<unit>:<row>`` ids from the
    footer's row count (the ids the Parquet reader gives id-less files), else one record standing
    for the whole unreadable unit.
    """
    import pyarrow.parquet as pq

    msg = f"{unit['name']}: {error}"
    path = unit.get("path")
    if path and str(path).endswith(".parquet"):
        try:
            f = pq.ParquetFile(path)
            if "sample_id" in f.schema_arrow.names:
                ids = pq.read_table(path, columns=["sample_id"]).column("sample_id").to_pylist()
            else:
                ids = [f"{unit['name']}:{i}" for i in range(f.metadata.num_rows)]
            return [(i, msg) for i in ids]
        except Exception:
            pass
    return [(unit["name"], msg)]


@task(name="finish", retries=1, retry_delay_seconds=2,
      retry_condition_fn=lambda task, run, state: _retryable(state))
def finish_task(select: dict, out: str, run: dict, units: list[dict], scored: list[dict],
                failed: list[dict]) -> dict:
    """Select, dedup and write the curated dataset from the per-unit score files (``pipeline.finish``)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from kdata.dataset.schema import SCORES_SCHEMA
    from kdata.pipeline.run import finish, prepare
    from kdata.pools.spec import Pool

    cfg = _select_config(select)
    prep = prepare(cfg, opts=_run_options(run))
    ok = {s["unit"] for s in scored}
    listed = {u["name"] for u in units}
    prep.pool = Pool(spec=prep.pool.spec, units=[u for u in prep.pool.units if u.name in ok and u.name in listed],
                     class_names=prep.pool.class_names, description=prep.pool.description, extra=prep.pool.extra)
    tables = [pq.read_table(s["path"]) for s in scored]
    scores = pa.concat_tables(tables) if tables else SCORES_SCHEMA.empty_table()
    quarantined = [tuple(q) for s in scored for q in s["quarantined"]]
    unit_q = [tuple(q) for f in failed for q in f["records"]]
    score_info = {"n_in": sum(s["n_in"] for s in scored) + len(unit_q), "units": len(units),
                  "cache_hits": sum(bool(s["score_cache_hit"]) for s in scored)}
    _pause_hook()
    report = finish(prep, out=out, scores=scores, quarantined=quarantined + unit_q, score_info=score_info)
    if (run or {}).get("card_dir"):  # the card catalogue copy, as `kdata select --card-dir`
        from kdata.report.card import publish

        report.info["card"] = str(publish(out, run["card_dir"]))
    return report.to_dict()


def _pause_hook() -> None:
    """Test hook: with ``KDATA_FLOW_PAUSE_AT_WRITE=FILE`` the run touches FILE once the staging
    directory holds the shards, then sleeps before the manifest/commit, so a test can SIGKILL it
    mid-write deterministically."""
    marker = os.environ.get("KDATA_FLOW_PAUSE_AT_WRITE")
    if not marker:
        return
    import kdata.pipeline.run as pipeline

    original = pipeline._write_manifest

    def pausing(path, manifest):
        Path(marker).write_text(str(os.getpid()))
        time.sleep(float(os.environ.get("KDATA_FLOW_PAUSE_SECONDS", "120")))
        original(path, manifest)

    pipeline._write_manifest = pausing


# ------------------------------------------------------------------------------------------------
# Report

def summary(report: dict, *, units: list[dict], states: dict, failed: list[dict]) -> tuple[str, list[dict]]:
    """Markdown summary and table rows (counts by decision and reason, class balance, shard paths)."""
    import pyarrow.parquet as pq

    out = Path(report["out"])
    c = report["counts"]
    rows = [{"kind": "decision", "name": k, "count": c[k]} for k in ("n_in", "kept", "rejected", "quarantined")]
    rows += [{"kind": "rejected_reason", "name": r, "count": n} for r, n in c.get("rejected_by_reason", {}).items()]
    balance: dict[str, int] = {}
    manifest = json.loads((out / "manifest.json").read_text()) if (out / "manifest.json").exists() else {}
    names = manifest.get("class_names") or []
    for f in report["files"]:
        preds = pq.read_table(out / f["path"], columns=["teacher_pred"]).column("teacher_pred").to_pylist()
        for p in preds:
            key = names[p] if p is not None and 0 <= p < len(names) else str(p)
            balance[key] = balance.get(key, 0) + 1
    rows += [{"kind": "class_balance", "name": k, "count": n} for k, n in sorted(balance.items())]
    rows += [{"kind": "shard", "name": str(out / f["path"]), "count": f["rows"]} for f in report["files"]]
    n_cached = sum(1 for s in states.values() if s == "Cached")
    lines = [f"# kdata curate: {report['status']}", "",
             f"- output: `{out}`", f"- pool units: {len(units)} (scoring tasks cached: {n_cached}, "
             f"scored: {len(states) - n_cached - len(failed)}, quarantined units: {len(failed)})",
             f"- in {c['n_in']} · kept {c['kept']} · rejected {c['rejected']} · quarantined {c['quarantined']}", ""]
    if c.get("rejected_by_reason"):
        lines += ["| rejected reason | rows |", "|---|---|"]
        lines += [f"| {r} | {n} |" for r, n in c["rejected_by_reason"].items()] + [""]
    if balance:
        lines += ["| class (teacher) | kept rows |", "|---|---|"]
        lines += [f"| {k} | {n} |" for k, n in sorted(balance.items())] + [""]
    lines += ["| shard | rows | bytes |", "|---|---|---|"]
    lines += [f"| `{out / f['path']}` | {f['rows']} | {f['bytes']} |" for f in report["files"]]
    for f in failed:
        lines += ["", f"**quarantined unit** `{f['unit']}`: {f['error']}"]
    return "\n".join(lines) + "\n", rows


# ------------------------------------------------------------------------------------------------
# The flow

@flow(name="curate", log_prints=True)
def curate(select: dict | None = None, out: str = "runs/curated-{version}", run: dict | None = None,
           gpu: bool | None = None) -> dict:
    """Score the pool (one cached task per unit), select, dedup, write shards + manifest + artifacts.

    ``select``: SelectConfig fields (the options of ``kdata select``); ``run``: device, batch_size,
    num_workers, cache. ``out`` may hold ``{version}`` (a UTC timestamp per run). ``gpu`` asks Dask
    for a worker with a ``GPU`` resource per scoring task (default: when the device is cuda).
    """
    logger = get_run_logger()
    select, run = dict(select or {}), dict(run or {})
    out = expand_out(out)
    prepared = prepare_task(select, out, run)
    if prepared["done"]:
        m = prepared["manifest"]
        logger.info("%s already holds this run; nothing to do", out)
        return {"out": out, "status": "already complete", "counts": m["counts"], "files": m["files"],
                "units": {}, "failed": []}
    units, device = prepared["units"], prepared["device"]
    cache = bool(run.get("cache", True))
    scorer = score_unit_task.with_options(result_storage=_result_storage(), refresh_cache=not cache)
    use_gpu = device.startswith("cuda") if gpu is None else gpu
    args = dict(checksums=prepared["checksums"], score_config=prepared["score_config"], device=device, cache=cache)
    if use_gpu:
        import dask

        with dask.annotate(resources={"GPU": 1}):
            futures = [scorer.submit(select, u, **args) for u in units]
    else:
        futures = [scorer.submit(select, u, **args) for u in units]
    scored, failed, states = [], [], {}
    for u, fut in zip(units, futures):
        fut.wait()
        state = fut.state
        states[u["name"]] = state.name
        if state.is_completed():
            scored.append(fut.result())
        else:
            try:
                fut.result()
                error = f"task ended {state.name}"
            except BaseException as exc:  # the unit's error, kept with its quarantine records
                error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".strip()
            failed.append({"unit": u["name"], "error": error, "records": unit_quarantine(u, error)})
            logger.warning("quarantined unit %s: %s", u["name"], error)
    report = finish_task(select, out, run, units, scored, failed)
    md, rows = summary(report, units=units, states=states, failed=failed)
    key = "curate-" + hashlib.sha1(str(Path(report["out"]).resolve()).encode()).hexdigest()[:8]
    create_markdown_artifact(md, key=key + "-summary", description="kdata curate summary")
    create_table_artifact(rows, key=key + "-counts", description="counts by decision/reason, class balance, shards")
    print(md)
    return {"out": report["out"], "status": report["status"], "counts": report["counts"], "files": report["files"],
            "units": states, "failed": [{"unit": f["unit"], "error": f["error"]} for f in failed]}


# ------------------------------------------------------------------------------------------------
# Task runners

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


def run_curate(select: dict, *, out: str, run: dict | None = None, runner: dict | None = None,
               return_state: bool = False):
    """Run the curate flow once with a task runner from ``runner`` ({kind, address, workers})."""
    runner = dict(runner or {})
    tr = task_runner(runner.pop("kind", "local"), **runner)
    fl = curate.with_options(task_runner=tr) if tr is not None else curate
    return fl(select=select, out=out, run=run or {}, return_state=return_state)


def _env_runner():
    """``KDATA_FLOW_RUNNER`` (JSON {kind, address, workers}) picks the task runner of served runs."""
    raw = os.environ.get("KDATA_FLOW_RUNNER")
    if not raw:
        return None
    spec = json.loads(raw)
    return task_runner(spec.pop("kind", "local"), **spec)


if os.environ.get("KDATA_FLOW_RUNNER") and _env_runner() is not None:
    curate = curate.with_options(task_runner=_env_runner())


def config_params(data: dict) -> dict:
    """Flow parameters (select, out, run) from a loaded config file."""
    curate_cfg = data.get("curate") or {}
    return {"select": dict(data.get("select") or {}), "out": curate_cfg.get("out", "runs/curated-{version}"),
            "run": dict(data.get("run") or {})}


def main(argv: list[str] | None = None) -> int:
    from kdata.cli.common import add_select_options, config_from_args

    p = argparse.ArgumentParser(prog="flows/curate.py", description="Run the kdata curate flow once.")
    p.add_argument("--config", help="flow config YAML (select/run/runner sections); other options are ignored")
    add_select_options(p)
    for a in p._actions:
        if a.dest == "out":
            a.required = False
    p.add_argument("--runner", choices=["local", "dask"], default=None)
    p.add_argument("--address", help="Dask scheduler address, e.g. tcp://10.0.0.5:8786")
    p.add_argument("--dask-workers", type=int, default=None, help="LocalCluster worker processes (--runner dask)")
    args = p.parse_args(argv)
    try:
        if args.config:
            data = load_config(args.config)
            params = config_params(data)
            if args.out:
                params["out"] = args.out
            runner = dict(data.get("runner") or {})
        else:
            if not args.out:
                p.error("--out is required (or --config)")
            params = {"select": config_from_args(args).to_dict(), "out": args.out,
                      "run": {"device": args.device, "batch_size": args.batch_size, "num_workers": args.workers,
                              "cache": not args.no_cache, "card_dir": getattr(args, "card_dir", None)}}
            runner = {}
        if args.runner:
            runner["kind"] = args.runner
        if args.address:
            runner["address"] = args.address
        if args.dask_workers:
            runner["workers"] = args.dask_workers
        if runner.get("kind") is None and (args.address or args.dask_workers):
            runner["kind"] = "dask"
        result = run_curate(params["select"], out=params["out"], run=params["run"], runner=runner)
    except KdataError as exc:
        print(f"curate: error: {exc}", file=sys.stderr)
        return exc.exit_code
    if args.json:
        print(json.dumps(result, default=str))
    else:
        c = result["counts"]
        print(f"curate: {result['status']} {result['out']}  in {c['n_in']} kept {c['kept']} "
              f"rejected {c['rejected']} quarantined {c['quarantined']}", file=sys.stderr)
        for f in result["failed"]:
            print(f"  quarantined unit {f['unit']}: {f['error']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
