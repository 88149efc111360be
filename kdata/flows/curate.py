"""The ``curate`` Prefect flow: prepare → score (one cached task per pool unit) → finish.

It calls the same stage functions as ``kdata select`` (``kdata.pipeline.prepare.prepare``,
``kdata.scoring.score.score_unit``, ``kdata.pipeline.curate.finish``); nothing here re-implements
selection or writing. With ``--scores`` (bring-your-own predictions) there is nothing to score and
the flow is prepare → finish, exactly as ``kdata select --scores``. Tasks pass unit names, paths and content hashes, never tables or models: each task
loads the models itself (through a per-process cache keyed by spec + checksum).

Scoring tasks are cached by Prefect on (unit fingerprint, model checksums, scoring config,
kdata version), so a rerun after a crash, or a nightly run over a pool that only grew, shows
every unchanged unit as a ``Cached`` task and scores only new units. Prefect's cache records and
results live under ``$KDATA_CACHE/prefect-results`` next to the score files they point at.

A unit that keeps failing is quarantined with its error (its rows count as ``quarantined``) and
the flow finishes with the rest. Run once from a shell with the options of ``kdata select``::

    python flows/curate.py --pool builtin:digits-web --out runs/curated-v1
    python flows/curate.py --config flows/config.yaml          # writes runs/curated-<UTC timestamp>
    python flows/curate.py --pool DIR --out OUT --runner dask --dask-workers 2

Outputs go under ``runs/`` (git-ignored) unless ``--out`` says otherwise; ``python flows/distill.py
--data 'runs/curated-*'`` then trains on the newest complete version.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import sys
import time
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.tasks import exponential_backoff

from kdata.core.errors import KdataError
from kdata.core.lock import exclusive
from kdata.core.version import __version__
from kdata.core.warn import shows_lines
from kdata.flows.config import DEFAULT_OUT, expand_out, load_config, mark_records_used, result_storage
from kdata.flows.curate_text import empty_scores, score_text_unit_files, text_info, text_load
from kdata.flows.model_cache import cached_model
from kdata.flows.run_log import logs_warnings
from kdata.flows.runners import env_runner, retryable, task_runner
from kdata.flows.summary import summary

# ------------------------------------------------------------------------------------------------
# Configs from flow parameters

def _select_config(select: dict):
    from kdata.pipeline.config import select_config

    return select_config(dict(select), where="flow parameter select")


def _run_options(run: dict):
    from kdata.pipeline.config import run_options

    return run_options({k: v for k, v in (run or {}).items()}, where="flow parameter run")


# ------------------------------------------------------------------------------------------------
# Tasks

@task(name="prepare", retries=2, retry_delay_seconds=exponential_backoff(backoff_factor=1),
      retry_condition_fn=lambda task, run, state: retryable(state))
@logs_warnings
def prepare_task(select: dict, out: str, run: dict) -> dict:
    """Check OUT, open the pool, load the models: returns unit names/paths/fingerprints and checksums."""
    from kdata.flows.inputs import check_parquet_units
    from kdata.pipeline.output import already_complete, check_out_outside_pool
    from kdata.pipeline.prepare import prepare
    from kdata.pipeline.rerun import as_recorded_pool
    from kdata.pipeline.run import check_same_weights

    cfg = as_recorded_pool(_select_config(select), out)
    check_out_outside_pool(out, cfg.pool)
    done = already_complete(out, cfg.hash(), config=cfg.recorded())
    if done is not None:
        check_same_weights(out, scores=cfg.scores)  # a model or --scores file replaced in place: one line
        return {"done": True, "report": done.to_dict()}
    if cfg.scores:  # bring-your-own predictions: nothing to score, finish loads them
        return {"done": False, "units": [], "byo": True}
    prep = prepare(cfg, opts=_run_options(run), load=cached_model)
    check_parquet_units(prep.pool)  # an unreadable Parquet file stops the run, as in kdata select
    units = [{"name": u.name, "path": u.path, "fingerprint": u.fingerprint()} for u in prep.pool.units]
    checksums = {"teacher": prep.teacher.checksum, "student": prep.student.checksum}
    text = prep.extra.get("text_models")
    if text is not None and text.reference is not None:
        checksums["reference"] = text.reference.checksum
    return {"done": False, "units": units, "device": str(prep.device), "byo": False, "checksums": checksums,
            "score_config": dataclasses.asdict(prep.score_cfg), "methods": prep.methods,
            "kind": "text" if text is not None else "image"}


def score_cache_key(context, parameters: dict) -> str:
    """Prefect cache key of a scoring task: unit content, model checksums, scoring config, kdata version."""
    from kdata.scoring.score import ScoreConfig
    from kdata.scoring.text import TextScoreConfig

    text = parameters.get("kind") == "text"
    config = (TextScoreConfig if text else ScoreConfig)(**parameters["score_config"]).key()
    payload = {"unit": parameters["unit"]["fingerprint"], "models": parameters["checksums"],
               "config": config, "kdata": __version__,
               **({"kind": "text", "load": parameters.get("load")} if text else {}),
               "device": str(parameters.get("device", "cpu")).split(":")[0]}  # cpu/cuda scores differ
    return "kdata-score-" + hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]


@task(name="score-unit", cache_key_fn=score_cache_key, persist_result=True,
      retries=2, retry_delay_seconds=exponential_backoff(backoff_factor=1),
      retry_condition_fn=lambda task, run, state: retryable(state))
@logs_warnings
def score_unit_task(select: dict, unit: dict, checksums: dict, score_config: dict, device: str,
                    cache: bool = True, kind: str = "image", load: dict | None = None) -> dict:
    """Score one pool unit into the per-unit score cache; returns its path, quarantine list and row count.

    ``kind="text"``: Hugging Face text models (``load``: their precision / max_length / remote-code
    options) through ``kdata.scoring.text.score_text_unit``, the scorer ``kdata select`` uses."""
    from kdata.pipeline.config import pool_limits
    from kdata.pools.spec import open_pool
    from kdata.scoring.score import ScoreConfig, score_units

    if os.environ.get("KDATA_FLOW_FAIL_UNIT") and unit["name"] == os.environ["KDATA_FLOW_FAIL_UNIT"]:
        raise OSError(f"{unit['name']}: injected failure (KDATA_FLOW_FAIL_UNIT)")
    cfg = _select_config(select)
    pool = open_pool(cfg.pool, limits=pool_limits(cfg))
    found = [u for u in pool.units if u.name == unit["name"]]
    if not found:
        raise KdataError(f"{select['pool']}: unit {unit['name']} disappeared while the flow ran")
    u = found[0]
    fp = u.fingerprint()
    if fp != unit["fingerprint"]:
        raise KdataError(f"{unit['name']}: changed while the flow ran (content hash differs)")
    u = dataclasses.replace(u, fingerprint=lambda: fp)
    if kind == "text":
        return score_text_unit_files(select, u, checksums, score_config, device, cache=cache, load=load or {},
                                     model=cached_model)
    teacher = cached_model(select["teacher"], device=device, checksum=checksums["teacher"])
    student = cached_model(select["student"], device=device, checksum=checksums["student"])
    # the process's decode workers (kdata.models.decode_pool.DecodeService) serve every unit's task
    [(path, quarantined, n_in, hit)], info = score_units([u], teacher, student, config=ScoreConfig(**score_config),
                                                         device=device, cache=cache)
    return {"unit": unit["name"], "path": str(path), "quarantined": [list(q) for q in quarantined],
            "n_in": n_in, "score_cache_hit": hit, "decode_pids": info["decode_pids"].get(u.name, [])}


def _stale(future) -> bool:
    """A completed scoring task whose result names a score entry that is gone or damaged: a Prefect
    cache record outlives ``$KDATA_CACHE/scores`` cleared or pruned (``kdata cache prune``)."""
    from kdata.scoring.cache_entries import entry_intact

    future.wait()
    if not future.state.is_completed():
        return False
    result = future.result()
    return not entry_intact(Path(result["path"]), result["unit"])


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
            return [(None if i is None else str(i), msg) for i in ids]  # integer ids read as the reader gives them
        except Exception:
            pass
    return [(unit["name"], msg)]


@task(name="finish", retries=1, retry_delay_seconds=2,
      retry_condition_fn=lambda task, run, state: retryable(state))
@logs_warnings
def finish_task(select: dict, out: str, run: dict, units: list[dict], scored: list[dict],
                failed: list[dict]) -> dict:
    """Select, dedup and write the curated dataset from the per-unit score files (``pipeline.curate.finish``)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from kdata.pipeline.curate import Scored, finish
    from kdata.pipeline.output import publish_card
    from kdata.pipeline.prepare import prepare
    from kdata.pipeline.run import score
    from kdata.scoring.score import unit_scores

    cfg, opts = _select_config(select), _run_options(run)
    prep = prepare(cfg, opts=opts, load=cached_model)  # models come from this process's cache
    if prep.byo is not None:
        result = score(prep, opts=opts)
    else:
        ok = {s["unit"] for s in scored} & {u["name"] for u in units}
        prep.pool = dataclasses.replace(prep.pool, units=[u for u in prep.pool.units if u.name in ok])
        keep = getattr(prep.score_cfg, "load_embeddings", True)  # text runs: their own config, all columns
        tables = [unit_scores(Path(s["path"]), embedding=keep) for s in scored]
        unit_q = [tuple(q) for f in failed for q in f["records"]]
        info = {"n_in": sum(s["n_in"] for s in scored) + len(unit_q), "units": len(units),
                "cache_hits": sum(bool(s["score_cache_hit"]) for s in scored)}
        if "text_models" in prep.extra:  # as kdata.scoring.text.score_text_pool concatenates and reports
            tables = [t for t in tables if t.num_rows] or tables[:1]
            info.update(text_info(prep))
        result = Scored(scores=pa.concat_tables(tables, promote_options="default") if tables
                        else empty_scores(prep),
                        quarantined=[tuple(q) for s in scored for q in s["quarantined"]] + unit_q, info=info)
    report = finish(prep, result, out=out, before_commit=_pause_hook())
    return publish_card(report, opts.card_dir).to_dict()


def _pause_hook():
    """Test hook: with ``KDATA_FLOW_PAUSE_AT_WRITE=FILE`` the run touches FILE once the staging
    directory holds everything, then sleeps before the commit, so a test can SIGKILL it mid-write."""
    marker = os.environ.get("KDATA_FLOW_PAUSE_AT_WRITE")
    if not marker:
        return None

    def pause(staging: Path) -> None:
        Path(marker).write_text(str(os.getpid()))
        time.sleep(float(os.environ.get("KDATA_FLOW_PAUSE_SECONDS", "120")))

    return pause


# ------------------------------------------------------------------------------------------------
# The flow

@flow(name="curate", log_prints=True)
@logs_warnings
def curate(select: dict | None = None, out: str = DEFAULT_OUT, run: dict | None = None,
           gpu: bool | None = None) -> dict:
    """Score the pool (one cached task per unit), select, dedup, write shards + manifest + artifacts.

    ``select``: SelectConfig fields (the options of ``kdata select``); ``run``: device, batch_size,
    num_workers, cache. ``out`` may hold ``{version}`` (a UTC timestamp per run). ``gpu`` asks Dask
    for a worker with a ``GPU`` resource per scoring task (default: when the device is cuda).
    """
    select, run = dict(select or {}), dict(run or {})
    out = expand_out(out)
    with exclusive(out):  # the whole run holds OUT; a second run fails at once, naming this one
        return _curate(select, out, run, gpu)


def _curate(select: dict, out: str, run: dict, gpu: bool | None) -> dict:
    logger = get_run_logger()
    prepared = prepare_task(select, out, run)
    if prepared["done"]:
        r = prepared["report"]
        logger.info("%s already holds this run; nothing to do", out)
        return {"out": out, "status": r["status"], "counts": r["counts"], "files": r["files"],
                "units": {}, "failed": []}
    units, device = prepared["units"], prepared.get("device", "cpu")
    cache = bool(run.get("cache", True))
    scorer = score_unit_task.with_options(result_storage=result_storage(), refresh_cache=not cache)
    use_gpu = device.startswith("cuda") if gpu is None else gpu
    args = {"checksums": prepared.get("checksums"), "score_config": prepared.get("score_config"),
            "device": device, "cache": cache}
    if prepared.get("kind") == "text":
        args.update(kind="text", load=text_load(_select_config(select), run))
    if use_gpu:
        import dask

        with dask.annotate(resources={"GPU": 1}):
            futures = [scorer.submit(select, u, **args) for u in units]
    else:
        futures = [scorer.submit(select, u, **args) for u in units]
    stale = [i for i, fut in enumerate(futures) if _stale(fut)]
    if stale:  # Prefect's record names a score file that is gone or damaged: score those units again
        logger.warning("%d unit(s) had a Prefect cache record whose score file is gone or damaged (%s); scoring "
                       "them again", len(stale), ", ".join(units[i]["name"] for i in stale[:3]) +
                       (", …" if len(stale) > 3 else ""))
        again = scorer.with_options(refresh_cache=True)
        for i in stale:
            futures[i] = again.submit(select, units[i], **args)
    scored, failed, states, pids = [], [], {}, {}
    for u, fut in zip(units, futures):
        fut.wait()
        state = fut.state
        states[u["name"]] = state.name
        if state.is_completed():
            scored.append(fut.result())
            pids[u["name"]] = scored[-1].get("decode_pids", [])
        else:
            try:
                fut.result()
                error = f"task ended {state.name}"
            except BaseException as exc:  # the unit's error, kept with its quarantine records
                error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".strip()
            failed.append({"unit": u["name"], "error": error, "records": unit_quarantine(u, error)})
            logger.warning("quarantined unit %s: %s", u["name"], error)
    mark_records_used(score_cache_key(None, {"unit": u, "kind": "image", **args}) for u in units)
    report = finish_task(select, out, run, units, scored, failed)
    md, rows = summary(report, units=units, states=states, failed=failed)
    key = "curate-" + hashlib.sha1(str(Path(report["out"]).resolve()).encode()).hexdigest()[:8]
    create_markdown_artifact(md, key=key + "-summary", description="kdata curate summary")
    create_table_artifact(rows, key=key + "-counts", description="counts by decision/reason, class balance, shards")
    print(md)
    return {"out": report["out"], "status": report["status"], "counts": report["counts"], "files": report["files"],
            "units": states, "failed": [{"unit": f["unit"], "error": f["error"]} for f in failed],
            "decode_pids": pids}


# ------------------------------------------------------------------------------------------------
# Task runners


def run_curate(select: dict, *, out: str, run: dict | None = None, runner: dict | None = None,
               return_state: bool = False):
    """Run the curate flow once with a task runner from ``runner`` ({kind, address, workers})."""
    runner = dict(runner or {})
    tr = task_runner(runner.pop("kind", "local"), **runner)
    fl = curate.with_options(task_runner=tr) if tr is not None else curate
    return fl(select=select, out=out, run=run or {}, return_state=return_state)


if os.environ.get("KDATA_FLOW_RUNNER") and env_runner() is not None:
    curate = curate.with_options(task_runner=env_runner())


def check_inputs(select: dict, run: dict, out: str = DEFAULT_OUT) -> None:
    """Every check that needs no scoring, before a flow run starts, so bad input is one line and no
    Prefect traceback (``kdata.flows.inputs.check_curate``): the options, OUT, the pool, the models
    (loaded into this process's model cache, which the flow's tasks reuse) or the ``--scores`` file."""
    from kdata.flows.inputs import check_curate

    check_curate(select, run, out, load=cached_model)


@shows_lines
def main(argv: list[str] | None = None) -> int:
    """``python flows/curate.py``: the options of ``kdata select`` (or ``--config`` with select/run/runner
    sections), plus the task runner."""
    from kdata.pipeline.arguments import add_select_options

    p = argparse.ArgumentParser(prog="flows/curate.py", description="Run the kdata curate flow once.")
    add_select_options(p)
    for a in p._actions:
        if a.dest == "out":
            a.required, a.default = False, None
            a.help = (f"output directory; {{version}} becomes a UTC timestamp (default: the config's "
                      f"curate: out:, else {DEFAULT_OUT})")
    p.add_argument("--runner", choices=["local", "dask"], default=None, help="task runner (default: local)")
    p.add_argument("--address", help="Dask scheduler address, e.g. tcp://10.0.0.5:8786")
    p.add_argument("--dask-workers", type=int, default=None, help="LocalCluster worker processes (--runner dask)")
    args = p.parse_args(argv)
    try:
        from kdata.flows.inputs import check_api, runner_from_args, select_and_run

        data = load_config(args.config) if args.config else {}
        out = args.out or (data.get("curate") or {}).get("out") or DEFAULT_OUT
        select, run = select_and_run(args, data, where=args.config or "command line")
        runner = runner_from_args(args, data, config=args.config)
        check_api()
        check_inputs(select, run, out)
        result = run_curate(select, out=out, run=run, runner=runner)
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
