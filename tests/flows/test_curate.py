"""The Prefect flows against a real Prefect server (one session-scoped test harness), a real Dask
LocalCluster and real subprocesses (a SIGKILLed flow run; ``kdata serve``)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kdata.dataset.writer import read_manifest, read_shards, verify
from tests.flows.server import api as _api
from tests.flows.server import artifacts, run_logs
from tests.flows.server import subproc_env as _subproc_env

ROOT = Path(__file__).resolve().parents[2]
FLOWS = ROOT / "flows"


def _load(name: str):
    import importlib

    return importlib.import_module(f"kdata.flows.{name}")


@pytest.fixture(scope="module")
def curate_mod(prefect_api, builtin_models):
    return _load("curate")


def _shard_hashes(out) -> list[str]:
    return [f["sha256"] for f in read_manifest(out)["files"]]


def _task_states(flow_run_id, *, name: str = "score-unit", n: int, timeout: float = 30.0) -> list[str]:
    """State names of the flow run's scoring task runs, read back from the server."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import TaskRunSort

    deadline = time.time() + timeout
    while True:
        runs = _api(lambda c: c.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
                                               sort=TaskRunSort.EXPECTED_START_TIME_ASC, limit=200))
        mine = [r for r in runs if r.name.startswith(name) and r.state is not None]
        states = [r.state.name for r in mine]
        if (len(states) == n and all(r.state.is_final() for r in mine)) or time.time() > deadline:
            return sorted(states)
        time.sleep(0.5)


@pytest.fixture(scope="module")
def first_run(curate_mod, pool_dir, tmp_path_factory):
    """The flow run once from its command line (the options of ``kdata select``)."""
    out = tmp_path_factory.mktemp("flowruns") / "flow-a"
    rc = curate_mod.main(["--pool", str(pool_dir), "--out", str(out), "--method", "kd3", "--budget", "0.3", "--json"])
    assert rc == 0
    return out


def test_curate_flow_matches_kdata_select(first_run, pool_dir, tmp_path):
    from kdata.cli import main

    sel = tmp_path / "select"
    assert main(["select", "--pool", str(pool_dir), "--out", str(sel), "--method", "kd3", "--budget", "0.3",
                 "--quiet"]) == 0
    assert _shard_hashes(first_run) == _shard_hashes(sel)
    mf, ms = read_manifest(first_run), read_manifest(sel)
    assert mf["counts"] == ms["counts"] and mf["config_hash"] == ms["config_hash"]
    assert mf["counts"]["n_in"] == 1457 and mf["counts"]["kept"] == int(0.3 * 1457)
    assert read_shards(first_run).equals(read_shards(sel))
    assert pq.read_table(first_run / "decisions.parquet").equals(pq.read_table(sel / "decisions.parquet"))
    assert verify(first_run) == []


def test_rerun_hits_cache_for_every_unit_and_is_byte_identical(curate_mod, first_run, tmp_path):
    from kdata.flows.config import result_storage

    cfg = read_manifest(first_run)["config"]
    records = sorted(result_storage().glob("kdata-score-*"))
    day_ago = time.time() - 86400
    for r in records:  # as if written yesterday: the rerun reads them, so it must mark them used
        os.utime(r, (day_ago, day_ago))
    started = time.time()
    state = curate_mod.curate(select=cfg, out=str(tmp_path / "again"), run={"device": "cpu"}, return_state=True)
    assert state.is_completed()
    result = state.result()
    assert set(result["units"].values()) == {"Cached"} and len(result["units"]) == 4
    assert sum(r.stat().st_mtime >= started - 1 for r in records) >= 4  # kdata cache prune keeps them now
    assert _task_states(state.state_details.flow_run_id, n=4) == ["Cached"] * 4
    assert _shard_hashes(tmp_path / "again") == _shard_hashes(first_run)
    # the artifacts' content: a Markdown summary and table rows (counts/reasons, class balance, shards)
    md, rows = curate_mod.summary(result, units=[{"name": n} for n in result["units"]], states=result["units"],
                                  failed=[])
    kept = next(r["count"] for r in rows if r["kind"] == "decision" and r["name"] == "kept")
    assert kept == result["counts"]["kept"] and "scoring tasks cached: 4" in md
    assert sum(r["count"] for r in rows if r["kind"] == "class_balance") == kept
    assert sum(r["count"] for r in rows if r["kind"] == "rejected_reason") == result["counts"]["rejected"]
    assert [r["name"] for r in rows if r["kind"] == "shard"] == [
        str(tmp_path / "again" / f["path"]) for f in result["files"]]
    # ... and both artifacts are stored on the server, attached to this flow run
    assert {"markdown", "table"} <= set(_artifact_types(state.state_details.flow_run_id))


def _artifact_types(flow_run_id) -> list[str]:
    """Types of the artifacts the server holds for a flow run."""
    return [a["type"] for a in artifacts(flow_run_id=flow_run_id)]


def test_distill_flow_trains_on_the_newest_version_and_records_accuracy(prefect_api, first_run, tmp_path):
    distill = _load("distill")
    state = distill.distill(data=str(first_run), epochs=1, device="cpu", out=str(tmp_path / "student"),
                            return_state=True)
    assert state.is_completed()
    res = state.result()
    assert res["data"] == str(first_run) and 0.0 <= res["accuracy"] <= 1.0 and res["accuracy_before"] is not None
    assert (tmp_path / "student" / "student.pt2").exists()
    assert "markdown" in _artifact_types(state.state_details.flow_run_id)


def _unique_shard(pool_dir: Path, n: int = 50) -> pa.Table:
    """A new unit: ``n`` rows of the pool under fresh sample ids (a per-session nonce keeps its hash new)."""
    t = pq.read_table(sorted(pool_dir.glob("*.parquet"))[0]).slice(0, n)
    nonce = uuid.uuid4().hex[:8]
    ids = pa.array([f"new-{nonce}-{i}" for i in range(n)])
    return t.set_column(t.schema.get_field_index("sample_id"), "sample_id", ids)


def test_new_shard_is_the_only_unit_scored(curate_mod, first_run, pool_dir, tmp_path):
    grown = tmp_path / "pool"
    shutil.copytree(pool_dir, grown)
    pq.write_table(_unique_shard(pool_dir), grown / "part-99999.parquet")
    cfg = dict(read_manifest(first_run)["config"], pool=str(grown))
    state = curate_mod.curate(select=cfg, out=str(tmp_path / "grown"), run={"device": "cpu"}, return_state=True)
    result = state.result()
    units = result["units"]
    assert units.pop("part-99999.parquet") == "Completed"
    assert set(units.values()) == {"Cached"} and len(units) == 4
    assert _task_states(state.state_details.flow_run_id, n=5) == ["Cached"] * 4 + ["Completed"]
    assert result["counts"]["n_in"] == 1457 + 50


def test_failing_unit_is_quarantined_and_the_flow_finishes(curate_mod, first_run, pool_dir, tmp_path):
    bad_pool = tmp_path / "pool"
    shutil.copytree(pool_dir, bad_pool)
    # readable footer, unusable content (no payload column): every retry fails the same way
    pq.write_table(pa.table({"sample_id": [f"bad-{i}" for i in range(7)], "foo": list(range(7))}),
                   bad_pool / "part-bad.parquet")
    cfg = dict(read_manifest(first_run)["config"], pool=str(bad_pool))
    state = curate_mod.curate(select=cfg, out=str(tmp_path / "out"), run={"device": "cpu"}, return_state=True)
    assert state.is_completed()
    result = state.result()
    assert [f["unit"] for f in result["failed"]] == ["part-bad.parquet"]
    assert "part-bad.parquet" in result["failed"][0]["error"]
    c = result["counts"]
    assert c["quarantined"] == 7 and c["n_in"] == 1457 + 7
    assert c["n_in"] == c["kept"] + c["rejected"] + c["quarantined"]
    dec = pq.read_table(tmp_path / "out" / "decisions.parquet").to_pandas()
    q = dec[dec.decision == "quarantined"]
    assert sorted(q.sample_id) == sorted(f"bad-{i}" for i in range(7))
    assert q.error.str.contains("part-bad.parquet").all()


def test_flow_killed_mid_write_reruns_to_a_complete_result(curate_mod, prefect_api, first_run, pool_dir, tmp_path):
    out = tmp_path / "killed"
    marker = tmp_path / "at-write"
    cmd = [sys.executable, str(FLOWS / "curate.py"), "--pool", str(pool_dir), "--out", str(out),
           "--method", "kd3", "--budget", "0.3", "--quiet"]
    proc = subprocess.Popen(cmd, env=_subproc_env(prefect_api, KDATA_FLOW_PAUSE_AT_WRITE=str(marker)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=tmp_path)
    try:
        deadline = time.time() + 90
        while not marker.exists():
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.time() < deadline, "flow never reached the write step"
            time.sleep(0.2)
        staging = list(tmp_path.glob(".killed.kdata-staging-*"))
        assert staging and list(staging[0].glob("data/*.parquet"))  # shards written, not committed
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not out.exists()  # nothing a later run would trust
    cfg = read_manifest(first_run)["config"]
    state = curate_mod.curate(select=cfg, out=str(out), run={"device": "cpu"}, return_state=True)
    assert state.is_completed() and state.result()["status"] == "written"
    assert verify(out) == []
    assert _shard_hashes(out) == _shard_hashes(first_run)
    assert not list(tmp_path.glob(".killed.kdata-staging-*"))


def test_curate_on_a_two_worker_dask_local_cluster(curate_mod, first_run, tmp_path):
    cfg = read_manifest(first_run)["config"]
    result = curate_mod.run_curate(cfg, out=str(tmp_path / "dask"), run={"device": "cpu", "cache": False},
                                   runner={"kind": "dask", "workers": 2})
    # cache off: every unit really scored on the workers, same dataset as the local run
    assert set(result["units"].values()) == {"Completed"} and len(result["units"]) == 4
    assert _shard_hashes(tmp_path / "dask") == _shard_hashes(first_run)


def test_flow_units_share_one_set_of_decode_workers(curate_mod, first_run, tmp_path):
    """One Prefect task per unit, yet the decode workers start once: every unit's batches come from
    the same two worker processes (kdata.models.decode_pool.DecodeService), and the dataset is the same."""
    import os

    cfg = read_manifest(first_run)["config"]
    result = curate_mod.run_curate(cfg, out=str(tmp_path / "w2"), run={"device": "cpu", "cache": False, "num_workers": 2})
    pids = result["decode_pids"]
    assert len(pids) == 4 and set(result["units"].values()) == {"Completed"}
    seen = {pid for unit_pids in pids.values() for pid in unit_pids}  # a restart would bring new PIDs
    assert len(seen) == 2 and os.getpid() not in seen and all(pids.values()), pids
    assert _shard_hashes(tmp_path / "w2") == _shard_hashes(first_run)


def test_serve_with_schedule_and_run_deployment(prefect_api, first_run, pool_dir, tmp_path):
    import yaml
    from prefect.deployments import run_deployment

    cfg = {"select": {"pool": str(pool_dir), "method": "kd3", "budget": "0.3"}, "run": {"device": "cpu"},
           "curate": {"name": "test", "out": str(tmp_path / "served-{version}"), "cron": "0 2 * * *",
                      "timezone": "UTC"},
           "distill": {"name": "test", "data": str(tmp_path / "served-{version}"), "epochs": 1, "cron": "0 4 * * *"}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    env = _subproc_env(prefect_api, PREFECT_RUNNER_POLL_FREQUENCY="1")
    proc = subprocess.Popen([sys.executable, "-m", "kdata.cli", "serve", "--config", "config.yaml"], env=env, cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 60
        deps = {}
        while len(deps) < 2:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.time() < deadline, "deployments never registered"
            for name in ("curate/test", "distill/test"):
                try:
                    deps[name] = _api(lambda c: c.read_deployment_by_name(name))
                except Exception:
                    pass
            time.sleep(0.5)
        crons = {n: [s.schedule.cron for s in d.schedules] for n, d in deps.items()}
        assert crons == {"curate/test": ["0 2 * * *"], "distill/test": ["0 4 * * *"]}
        run = run_deployment("curate/test", timeout=120)
        assert run.state.is_completed(), run.state
        outs = [p for p in tmp_path.glob("served-*") if (p / "manifest.json").exists()]
        assert len(outs) == 1 and _shard_hashes(outs[0]) == _shard_hashes(first_run)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_shipped_config_and_prefect_yaml_are_valid(curate_mod):
    import yaml

    deps = _load("serve").deployments(FLOWS / "config.yaml")
    assert [(d.flow_name, d.schedules[0].schedule.cron) for d in deps] == [("curate", "0 2 * * *"),
                                                                          ("distill", "0 4 * * *")]
    params = deps[0].parameters
    from kdata.pipeline.config import SelectConfig

    SelectConfig(**params["select"])  # every select key is a SelectConfig field
    declared = yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]
    assert sorted(d["entrypoint"] for d in declared) == ["flows/curate.py:curate", "flows/distill.py:distill"]
    assert declared[0]["parameters"]["select"] == params["select"]


def test_serve_checks_the_prefect_api_before_serving(prefect_api):
    """A server that answers is accepted; an address where none answers is one line naming it, exit 2."""
    import os

    from kdata.flows.serve import check_api

    assert check_api() == prefect_api
    env = {**os.environ, "PREFECT_API_URL": "http://127.0.0.1:9/api"}
    proc = subprocess.run([sys.executable, "-m", "kdata.cli", "serve", "--config", str(FLOWS / "config.yaml")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "PREFECT_API_URL http://127.0.0.1:9/api: no Prefect server answers there" in proc.stderr


def test_flow_with_scores_equals_kdata_select_scores(curate_mod, tmp_path, capsys):
    """Bring-your-own predictions: the flow honours --scores and writes what `kdata select --scores` writes."""
    import numpy as np

    from kdata.pipeline import SelectConfig, run_select
    from tests.helpers.methods import write_predictions

    rng = np.random.default_rng(0)
    t = rng.normal(size=(300, 6)).astype(np.float32)
    s = t + rng.normal(scale=0.8, size=t.shape).astype(np.float32)
    path = write_predictions(tmp_path / "preds.parquet", t, s, label=rng.integers(0, 6, 300))
    select = {"scores": path, "method": "kd3", "budget": "0.3"}
    result = curate_mod.run_curate(select, out=str(tmp_path / "flow"), run={"device": "cpu"})
    direct = run_select(SelectConfig(scores=path, pool=None, method="kd3", budget="0.3"), out=str(tmp_path / "cli"))
    assert result["status"] == "written" and result["counts"] == direct.counts
    assert _shard_hashes(tmp_path / "flow") == _shard_hashes(tmp_path / "cli")
    assert read_manifest(tmp_path / "flow")["config"]["scores"] == path
    # the same flow again is "already complete"; with the predictions file replaced in place it is
    # refused in one line (as kdata select is), not answered with the old selection
    again = ["--scores", path, "--method", "kd3", "--budget", "0.3", "--out", str(tmp_path / "flow"), "--json"]
    assert curate_mod.main(again) == 0
    write_predictions(tmp_path / "preds.parquet", t, t[::-1], label=rng.integers(0, 6, 300))
    capsys.readouterr()
    assert curate_mod.main(again) == 2
    assert "the predictions file's checksum is now" in capsys.readouterr().err


def test_a_score_file_gone_behind_a_cache_record_is_scored_again(curate_mod, first_run, tmp_path):
    """Clearing ``$KDATA_CACHE/scores`` (or pruning it) leaves Prefect's cache records naming files that
    are gone: those units are scored again, not a FileNotFoundError in the finish task."""
    import json
    import os

    scores = Path(os.environ["KDATA_CACHE"]) / "scores"
    markers = {m: json.loads(m.read_text())["unit"] for m in scores.glob("*.quarantine.json")}
    gone = [m for m, unit in markers.items() if unit == "part-00000.parquet"]
    damaged = [m for m, unit in markers.items() if unit == "part-00001.parquet"]
    assert gone and damaged
    for m in gone:
        m.with_name(m.name.replace(".quarantine.json", ".parquet")).unlink()
    for m in damaged:
        p = m.with_name(m.name.replace(".quarantine.json", ".parquet"))
        p.write_bytes(p.read_bytes()[:-10] + b"0123456789")
    cfg = read_manifest(first_run)["config"]
    state = curate_mod.curate(select=cfg, out=str(tmp_path / "again"), run={"device": "cpu"}, return_state=True)
    assert state.is_completed()
    units = state.result()["units"]
    assert units.pop("part-00000.parquet") == "Completed" and units.pop("part-00001.parquet") == "Completed"
    assert set(units.values()) == {"Cached"}
    assert _shard_hashes(tmp_path / "again") == _shard_hashes(first_run)
    assert verify(tmp_path / "again") == []
    # the damaged entry's warning is in the run's Prefect log, as the CLI's one line (kdata.flows.run_log)
    logged = [(r["level"], r["message"]) for r in run_logs(state.state_details.flow_run_id)]
    assert any(level == 30 and m.startswith("kdata: warning: score cache entry ") and "dropped, computed again" in m
               for level, m in logged), logged
