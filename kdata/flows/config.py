"""The flows' config file (``flows/config.yaml``), output versions and dataset discovery.

No Prefect import here: the entry points check their input with these before any flow run starts.
"""

from __future__ import annotations

import fnmatch
import glob
import os
from datetime import UTC, datetime
from pathlib import Path

from kdata.core.errors import KdataError
from kdata.dataset.manifest import MANIFEST

SECTIONS = ("select", "run", "runner", "curate", "distill")
# Every flow output lives under runs/ (git-ignored): curate writes a new version per run, distill
# finds the newest complete one with the glob runs/curated-* and saves the student beside it.
DEFAULT_OUT = "runs/curated-{version}"
DEFAULT_DATA = "runs/curated-*"
SCHEDULE_KEYS = {"name", "cron", "timezone"}
SECTION_KEYS = {"curate": SCHEDULE_KEYS | {"out"},
                "distill": SCHEDULE_KEYS | {"enabled", "data", "student", "eval", "epochs", "seed", "device", "out",
                                             "keep_last"},
                # the keyword arguments of kdata.flows.runners.task_runner
                "runner": {"kind", "address", "workers", "threads_per_worker", "gpus_per_worker"}}
RUNNER_KINDS = ("local", "dask")


def load_config(path: str | os.PathLike) -> dict:
    """Read a flow config YAML (see ``flows/config.yaml``); its ``select:`` and ``run:`` sections are
    checked against the options of ``kdata select`` (kdata.pipeline.config), the ``runner:``,
    ``curate:`` and ``distill:`` sections against the flows' parameters, before anything runs.

    A flat file (the ``kdata select`` option names at the top level, no sections) is read as
    ``kdata select --config`` reads it: its keys become the ``select:`` and ``run:`` sections."""
    from kdata.pipeline.config import load_yaml, run_options, select_config

    data = load_yaml(path)
    if data and not set(data) & set(SECTIONS):
        data = flat_sections(path)
    bad = sorted(set(data) - set(SECTIONS))
    if bad:
        raise KdataError(f"{path}: unknown section(s) {bad}; known: {list(SECTIONS)}")
    for name in SECTIONS:
        if data.get(name) is not None and not isinstance(data[name], dict):
            raise KdataError(f"{path}: {name}: expected a mapping of keys, got {type(data[name]).__name__}")
    select_config(dict(data.get("select") or {}), where=f"{path}: select")
    run_options({k: v for k, v in (data.get("run") or {}).items()}, where=f"{path}: run")
    for name, known in SECTION_KEYS.items():
        extra = sorted(set(data.get(name) or {}) - known)
        if extra:
            raise KdataError(f"{path}: {name}: unknown key(s) {extra}; known: {sorted(known)}")
    check_runner(data.get("runner") or {}, where=f"{path}: runner")
    return data


def flat_sections(path: str | os.PathLike) -> dict:
    """A flat config file as ``select:`` and ``run:`` sections, split the way ``kdata select --config``
    splits it (kdata.pipeline.arguments.config_file_values); unknown keys are left in ``select``,
    whose check names them."""
    from types import SimpleNamespace

    from kdata.pipeline.arguments import config_file_values

    select, run, _ = config_file_values(SimpleNamespace(config=str(path)))
    return {"select": select, "run": run}


def check_runner(runner: dict, *, where: str = "runner") -> dict:
    """The ``runner:`` section (or ``--runner``/``--address``/``--dask-workers``): a known ``kind``,
    whole numbers of workers, threads and GPUs (workers and threads at least 1). Returns it."""
    kind = runner.get("kind")
    if kind not in (None, *RUNNER_KINDS):
        raise KdataError(f"{where}: kind {kind!r}: unknown; known: {list(RUNNER_KINDS)}")
    for key, least in (("workers", 1), ("threads_per_worker", 1), ("gpus_per_worker", 0)):
        value = runner.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least):
            raise KdataError(f"{where}: {key} {value!r}: must be a whole number ≥ {least}")
    address = runner.get("address")
    if address is not None and (not isinstance(address, str) or not address.strip()):
        raise KdataError(f"{where}: address {address!r}: give a Dask scheduler address, e.g. tcp://host:8786")
    if kind in (None, "local") and (address or runner.get("workers")):
        what = "address" if address else "workers"
        raise KdataError(f"{where}: {what} is a Dask setting: set kind: dask (the local runner takes none)")
    return runner


def config_params(data: dict) -> dict:
    """Curate flow parameters (select, out, run) from a loaded config file."""
    curate_cfg = data.get("curate") or {}
    return {"select": dict(data.get("select") or {}), "out": curate_cfg.get("out", DEFAULT_OUT),
            "run": dict(data.get("run") or {})}


def expand_out(out: str, *, now: datetime | None = None) -> str:
    """``{version}`` in OUT becomes a UTC timestamp, so each scheduled run writes a new dataset version."""
    now = now or datetime.now(UTC)
    return out.replace("{version}", now.strftime("%Y%m%dT%H%M%SZ"))


def written_into(out: str, data: str) -> bool:
    """Whether the datasets the curate flow writes to ``out`` (``{version}`` expanded per run) are what
    ``data`` names (the same pattern, or a glob that matches them): a ``distill.data`` that does not
    name them waits on datasets nothing writes."""
    def norm(p: str) -> str:
        return os.path.normpath(os.path.abspath(os.path.expanduser(p)))

    return norm(out) == norm(data) or fnmatch.fnmatchcase(norm(expand_out(out)), norm(data).replace("{version}", "*"))


def has_dataset(data: str) -> bool:
    """Whether ``data`` names a complete curated dataset now (``latest_dataset`` finds one)."""
    try:
        latest_dataset(data)
    except KdataError:
        return False
    return True


def latest_dataset(data: str) -> str:
    """``data`` itself when it holds a manifest, else the newest complete match of the glob (``{version}``
    counts as ``*``): a nightly distill trains on what last night's curate wrote. Complete means a
    ``manifest.json``, which the writer renames into place last, so a run still writing never matches
    (nor does a student directory beside a dataset)."""
    if (Path(data) / MANIFEST).is_file():
        return data
    pattern = data.replace("{version}", "*")
    if not glob.has_magic(pattern):
        why = f"not a curated dataset (no {MANIFEST})" if Path(data).exists() else "no such directory"
        raise KdataError(f"--data {data}: {why}; curate one first: python flows/curate.py --out {data}")
    done = [p for p in glob.glob(pattern) if (Path(p) / MANIFEST).is_file()]
    if not done:
        raise KdataError(f"--data {data}: no complete curated dataset matches (a directory with {MANIFEST}); "
                         f"curate one first: python flows/curate.py --out {DEFAULT_OUT}")
    return max(done, key=lambda p: ((Path(p) / MANIFEST).stat().st_mtime, p))


def result_storage() -> Path:
    """Where the flows' tasks keep Prefect's result records (``$KDATA_CACHE/prefect-results``): Prefect
    unpickles what it finds there on a cache hit, so the directory must be this user's alone
    (``kdata.core.paths.private_cache_dir``); one line otherwise."""
    from kdata.core.paths import cache_dir, private_cache_dir

    path = private_cache_dir("prefect-results")
    if path is None:
        raise KdataError(f"{cache_dir('prefect-results')}: other users can write here, and Prefect loads task "
                         "results from it with pickle; use a cache of your own (KDATA_CACHE) or chmod go-w it")
    return path


def mark_records_used(keys) -> None:
    """Mark the Prefect result records of these task cache keys used now (``kdata cache`` dates an entry
    by its last use, and Prefect reads a record on a cache hit without touching it), so a prune right
    after a run keeps what the run just reused."""
    from kdata.core.cache_admin import touch_used

    base = result_storage()
    for key in keys:
        if (base / key).is_file():
            touch_used(base / key)
