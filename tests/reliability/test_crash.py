"""Crash safety: ``kdata select`` SIGKILLed at each stage of a run, then run again.

A real ``python -m kdata.cli select`` process kills itself with SIGKILL at a chosen point
(``KDATA_CRASH_AFTER``, ``kdata.core.crashpoints``): mid-scoring (the first score-cache entry of a
unit written, in a fresh cache so scoring really happens), the staging directory created, a shard
half-written (its temporary file complete, not yet renamed), the first shard, ``decisions.parquet``,
the data card and ``manifest.json`` written in staging. After each kill OUT is absent (the rename
into place never happened), ``kdata inspect`` says ok on nothing partial, and a rerun completes with
shards and decisions byte-identical to an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from kdata.core.lock import lock_path
from kdata.dataset.writer import MANIFEST, STAGING_INFIX, staging_dirs, verify

ARGS = ["--method", "kd3", "--budget", "0.3", "--device", "cpu", "--quiet"]
CACHE_PARTS = ("models", "pools", "native")  # what a fresh cache is given: no scores


def digests(out: Path) -> dict[str, str]:
    """sha256 of every shard and of decisions.parquet, by path inside OUT."""
    files = sorted((out / "data").glob("*.parquet")) + [out / "decisions.parquet"]
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def cli_here(capsys, cache: Path, *args: str) -> tuple[int, str, str]:
    """``kdata ARGS`` through the CLI entry point in this process, with ``KDATA_CACHE=cache``."""
    from kdata.cli import main

    capsys.readouterr()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KDATA_CACHE", str(cache))
        code = main(list(args))
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def fresh_cache(template: Path, dest: Path) -> Path:
    shutil.copytree(template, dest)
    return dest


@pytest.fixture(scope="module")
def reference(tmp_path_factory, builtin_models):
    """A cache template (built-in models and pool, no scores), a warm cache scored once, and the
    reference: one uninterrupted run's digests."""
    from kdata.cli import main
    from kdata.pools.spec import open_pool

    open_pool("builtin:digits-web")  # materialised in the session cache
    root = tmp_path_factory.mktemp("crash")
    session = Path(os.environ["KDATA_CACHE"])
    template = root / "template"
    for part in CACHE_PARTS:
        if (session / part).is_dir():
            shutil.copytree(session / part, template / part)
    warm = fresh_cache(template, root / "warm")
    ref = root / "ref"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KDATA_CACHE", str(warm))
        assert main(["select", "--out", str(ref), *ARGS]) == 0
    assert verify(ref) == []
    return {"root": root, "template": template, "warm": warm, "ref": digests(ref)}


# ------------------------------------------------------------------------------------------------
# Stages: each a KDATA_CRASH_AFTER pattern, matched against absolute paths (``*`` also matches ``/``).

STAGING = f"*/.out{STAGING_INFIX}*"
STAGES: dict[str, tuple[str, str]] = {
    "scoring": ("the first score-cache entry of a unit written", "*/scores/*.parquet"),
    "staging": ("the staging directory created", STAGING),
    "shard-tmp": ("a shard written under its temporary name, not yet renamed", f"{STAGING}/data/.*.parquet.*.tmp"),
    "shard": ("the first shard written in staging", f"{STAGING}/data/*.parquet"),
    "decisions": ("decisions.parquet written in staging", f"{STAGING}/decisions.parquet"),
    "card": ("README.md (the data card) written in staging", f"{STAGING}/README.md"),
    "manifest": ("manifest.json written in staging, before the rename", f"{STAGING}/{MANIFEST}"),
}


def run_killed(pattern: str, out: Path, cache: Path) -> subprocess.CompletedProcess:
    """``kdata select`` into ``out`` with ``KDATA_CRASH_AFTER=pattern``."""
    env = {**os.environ, "KDATA_CACHE": str(cache), "KDATA_CRASH_AFTER": pattern}
    return subprocess.run([sys.executable, "-m", "kdata.cli", "select", "--out", str(out), *ARGS],
                          check=False, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
                          timeout=300)


@pytest.mark.parametrize("stage", list(STAGES))
def test_sigkill_at_each_stage_then_rerun_gives_the_reference_result(reference, stage, tmp_path, capsys):
    what, pattern = STAGES[stage]
    cache = reference["warm"]
    if stage == "scoring":  # a cache without scores, so that this run really scores
        cache = fresh_cache(reference["template"], tmp_path / "cache")
    out = tmp_path / "out"
    done = run_killed(pattern, out, cache)
    assert done.returncode == -signal.SIGKILL, f"not killed at '{what}' (exit {done.returncode}): {done.stderr}"

    # OUT is absent: a kill before the rename into place leaves nothing there
    assert not out.exists(), f"{out} exists after a kill at '{what}'"
    leftovers = staging_dirs(out)
    if stage == "scoring":  # killed before anything of OUT was written
        assert not leftovers and not out.exists(), leftovers
    else:  # the dead run's staging directory stays beside OUT until the next run removes it
        assert len(leftovers) == 1, leftovers
        if stage == "shard-tmp":  # the half-written shard is there under its temporary name only
            assert list(leftovers[0].glob("data/.*.tmp")) and not list(leftovers[0].glob("data/*.parquet"))

    # `kdata inspect` says ok on nothing partial
    code, stdout, _ = cli_here(capsys, cache, "inspect", "--json", str(out))
    assert code == 2
    for partial in leftovers:
        code, stdout, _ = cli_here(capsys, cache, "inspect", "--json", str(partial))
        if stage == "manifest":  # the manifest is written last: a staged manifest means a whole dataset
            assert code == 0 and json.loads(stdout)["integrity"]["ok"] and verify(partial) == []
        else:
            assert code != 0, stdout
            assert not (partial / MANIFEST).exists()

    # a rerun completes with byte-identical shards and decisions
    code, stdout, stderr = cli_here(capsys, cache, "select", "--out", str(out), *ARGS)
    assert code == 0, stderr
    assert stdout.startswith(("kdata: written", "kdata: already complete")), stdout
    assert verify(out) == []
    assert digests(out) == reference["ref"]
    assert not staging_dirs(out), staging_dirs(out)  # the dead run's staging was removed
    assert not lock_path(out).exists()
    if stage == "scoring":  # every score-cache entry left is whole: its completion marker beside it
        entries = sorted(p for p in (cache / "scores").glob("*.parquet") if not p.name.startswith("."))
        assert entries and all(p.with_suffix(".quarantine.json").exists() for p in entries), entries
        assert not list((cache / "scores").glob(".*.tmp"))
