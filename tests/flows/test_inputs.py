"""Bad input to the flow entry points (``flows/curate.py``, ``flows/distill.py``, ``flows/generate.py``)
is one line and exit 2 before any flow run starts — read back from the test's Prefect server, which
holds no new flow run — never a Prefect traceback from inside the run."""

from __future__ import annotations

import importlib
import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import prefect.main  # noqa: F401  (Prefect's console log handler binds sys.stderr when imported: not a test's capsys)
import pytest
import yaml

from kdata.core.errors import KdataError
from tests.flows.server import api, subproc_env

ROOT = Path(__file__).resolve().parents[2]
FLOWS = ROOT / "flows"
DEAD_API = "http://127.0.0.1:1/api"


def flow_runs() -> int:
    return api(lambda c: c.count_flow_runs())


@pytest.fixture
def one_line(prefect_api, capsys):
    """``one_line(module, argv, says=...)``: the entry point's ``main`` (in this process) returns 2
    with one stderr line holding ``says``, and the server gained no flow run."""

    def run(module: str, argv: list[str], *, says: str) -> str:
        before = flow_runs()
        rc = importlib.import_module(f"kdata.flows.{module}").main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and says in err[0], (rc, err)
        assert flow_runs() == before, "a flow run was created"
        return err[0]

    return run


def script(api_url: str, argv: list[str], cwd: Path, *, says: str, **env) -> str:
    """A flow script in a subprocess: exit 2, exactly one stderr line holding ``says``, no traceback."""
    before = flow_runs()
    proc = subprocess.run([sys.executable, *argv], cwd=cwd, env=subproc_env(api_url, **env), capture_output=True,
                          text=True, timeout=180, check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and says in lines[0], (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr + proc.stdout and "Flow run" not in proc.stderr
    assert flow_runs() == before, "a flow run was created"
    return lines[0]


@pytest.fixture
def other_run(tmp_path) -> Path:
    """An OUT holding another run's dataset (a manifest with a different config hash)."""
    out = tmp_path / "other"
    (out / "data").mkdir(parents=True)
    (out / "manifest.json").write_text(json.dumps({"config_hash": "0" * 64, "files": []}))
    return out


# ------------------------------------------------------------------------------------------------
# curate: OUT, --scores, the pool's Parquet files


def test_curate_out_holding_another_run_is_one_line_in_a_subprocess(prefect_api, other_run, tmp_path):
    line = script(prefect_api, [str(FLOWS / "curate.py"), "--pool", "builtin:digits-web", "--out", str(other_run),
                                "--budget", "0.1", "--device", "cpu"], tmp_path, says="--out already holds a different run")
    assert line.startswith(f"curate: error: {other_run}: ")
    assert not list(tmp_path.glob(".*kdata-lock"))  # the lock was taken for the check only


@pytest.mark.parametrize("case,says", [
    ("junk", "--out is not empty and holds no kdata manifest"),
    ("inside-pool", "--out lies inside the pool"),
    ("other-run", "--out already holds a different run"),
])
def test_bad_curate_out_is_one_line_before_any_flow_run(one_line, pool_dir, other_run, tmp_path, case, says):
    if case == "junk":
        out = tmp_path / "junk"
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    else:
        out = pool_dir / "curated" if case == "inside-pool" else other_run
    one_line("curate", ["--pool", str(pool_dir), "--out", str(out), "--budget", "0.1", "--device", "cpu"], says=says)
    assert not (pool_dir / "curated").exists()


def test_curate_bad_scores_file_is_one_line(one_line, tmp_path):
    import numpy as np

    from tests.helpers.methods import write_predictions

    t = np.random.default_rng(0).normal(size=(20, 4)).astype(np.float32)
    s = t.copy()
    s[2, 1] = np.nan
    path = write_predictions(tmp_path / "preds.parquet", t, s)
    line = one_line("curate", ["--scores", path, "--out", str(tmp_path / "out"), "--budget", "0.3"],
                    says="non-finite value")
    assert path in line and not (tmp_path / "out").exists()


def test_corrupt_parquet_unit_stops_the_run_like_kdata_select(one_line, curate_flow, pool_dir, tmp_path):
    from kdata.cli import main as cli

    bad = tmp_path / "pool"
    shutil.copytree(pool_dir, bad)
    (bad / "part-00009.parquet").write_text("garbage\n")
    args = ["--pool", str(bad), "--budget", "0.3", "--device", "cpu"]
    says = f"{bad / 'part-00009.parquet'}: cannot read Parquet"
    one_line("curate", [*args, "--out", str(tmp_path / "flow")], says=says)
    assert cli(["select", *args, "--out", str(tmp_path / "cli"), "--quiet"]) == 2  # the CLI, unchanged
    # the flow itself (a served run, no entry point in front) fails with that line, quarantining nothing
    state = curate_flow.curate(select={"pool": str(bad), "budget": "0.3"}, out=str(tmp_path / "served"),
                               run={"device": "cpu"}, return_state=True)
    assert state.is_failed() and says in state.message
    assert not (tmp_path / "served").exists()


@pytest.fixture(scope="module")
def curate_flow(prefect_api, builtin_models):
    return importlib.import_module("kdata.flows.curate")


# ------------------------------------------------------------------------------------------------
# the Prefect API and the task runner


@pytest.mark.parametrize("name,argv", [
    ("curate", ["--pool", "builtin:digits-web", "--out", "runs/x", "--device", "cpu"]),
    ("distill", ["--data", "runs/curated-*"]),
    ("generate", ["--prompts", "p.jsonl", "--out", "runs/g"]),
])
def test_unreachable_prefect_api_is_one_line(prefect_api, tmp_path, name, argv):
    (tmp_path / "p.jsonl").write_text('{"id": "p0", "prompt": "the cat"}\n')
    line = script(DEAD_API, [str(FLOWS / f"{name}.py"), *argv], tmp_path,
                  says=f"PREFECT_API_URL {DEAD_API}: no Prefect server answers there")
    assert line.startswith(f"{name}: error: ")


def test_no_prefect_api_url_leaves_the_temporary_server_to_prefect(prefect_api, monkeypatch):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from kdata.flows.inputs import check_api

    assert check_api() == prefect_api
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    with temporary_settings(updates={PREFECT_API_URL: None}):
        assert check_api() is None


def test_unreachable_dask_address_is_one_line_at_once(one_line, pool_dir, tmp_path):
    one_line("curate", ["--pool", str(pool_dir), "--out", str(tmp_path / "o"), "--runner", "dask",
                        "--address", "tcp://127.0.0.1:1"],  # kdata's probe, not Dask's 30 s of retries
             says="--address tcp://127.0.0.1:1: no Dask scheduler answers there (Connection refused)")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"select": {"pool": str(pool_dir)}, "runner": {"kind": "dask",
                                                                                 "address": "tcp://127.0.0.1:1"}}))
    one_line("curate", ["--config", str(cfg), "--out", str(tmp_path / "o")],
             says=f"{cfg}: runner: address tcp://127.0.0.1:1: no Dask scheduler answers there")


def test_dask_probe_accepts_a_listening_scheduler_address():
    from kdata.flows.inputs import probe_dask

    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        probe_dask(f"tcp://127.0.0.1:{srv.getsockname()[1]}")
    with pytest.raises(KdataError, match="not a Dask scheduler address"):
        probe_dask("tcp://[::1")


@pytest.mark.parametrize("flags,says", [
    (["--dask-workers", "0"], "--dask-workers 0: must be at least 1"),
    (["--runner", "dask", "--dask-workers", "0"], "--dask-workers 0: must be at least 1"),
    (["--runner", "local", "--address", "tcp://127.0.0.1:1"], "--address is a Dask option: use --runner dask"),
    (["--address", "tcp://127.0.0.1:1", "--dask-workers", "2"], "--address and --dask-workers: give one"),
])
def test_bad_runner_flags_are_usage_errors(one_line, pool_dir, tmp_path, flags, says):
    one_line("curate", ["--pool", str(pool_dir), "--out", str(tmp_path / "o"), *flags], says=says)


def test_address_flag_means_dask_even_when_the_config_says_local(tmp_path):
    import argparse

    from kdata.flows.inputs import runner_from_args

    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        addr = f"tcp://127.0.0.1:{srv.getsockname()[1]}"
        args = argparse.Namespace(runner=None, address=addr, dask_workers=None)
        assert runner_from_args(args, {"runner": {"kind": "local"}}) == {"kind": "dask", "address": addr}
    args = argparse.Namespace(runner=None, address=None, dask_workers=3)
    assert runner_from_args(args, {"runner": {"kind": "dask", "address": addr}}) == {"kind": "dask", "workers": 3}


# ------------------------------------------------------------------------------------------------
# the config file: runner section, flat files


@pytest.mark.parametrize("runner,says", [
    ({"kind": "dask", "n_workers": 2}, r"runner: unknown key\(s\) \['n_workers'\]; known: \['address', "
                                       r"'gpus_per_worker', 'kind', 'threads_per_worker', 'workers'\]"),
    ({"kind": "ray"}, r"runner: kind 'ray': unknown; known: \['local', 'dask'\]"),
    ({"kind": "dask", "workers": 0}, r"runner: workers 0: must be a whole number ≥ 1"),
    ({"kind": "local", "address": "tcp://h:8786"}, r"runner: address is a Dask setting: set kind: dask"),
])
def test_runner_section_is_checked(tmp_path, runner, says):
    from kdata.flows.config import load_config

    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"select": {"pool": "builtin:digits-web"}, "runner": runner}))
    with pytest.raises(KdataError, match=f"^{path}: {says}"):
        load_config(path)


def test_kdata_serve_refuses_an_unknown_runner_key_in_one_line(prefect_api, tmp_path):
    (tmp_path / "r.yaml").write_text(yaml.safe_dump({"select": {"pool": "builtin:digits-web"},
                                                     "runner": {"kind": "dask", "n_workers": 2}}))
    proc = subprocess.run([sys.executable, "-m", "kdata.cli", "serve", "--config", "r.yaml"], cwd=tmp_path,
                          env=subproc_env(prefect_api), capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr[-2000:]
    assert "r.yaml: runner: unknown key(s) ['n_workers']" in proc.stderr


def test_flat_config_file_is_read_as_kdata_select_reads_it(one_line, tmp_path):
    from kdata.flows.config import load_config

    flat = tmp_path / "flat.yaml"
    flat.write_text('pool: builtin:digits-web\nbudget: "0.1"\nworkers: 0\ndevice: cpu\n')
    data = load_config(flat)
    assert data["select"] == {"pool": "builtin:digits-web", "budget": "0.1"}
    assert data["run"] == {"num_workers": 0, "device": "cpu"}
    # through the entry point: read (not refused as unknown sections), then checked like any config
    flat.write_text("pool: no-such-pool\nbudget: '0.1'\n")
    one_line("curate", ["--config", str(flat), "--out", str(tmp_path / "o")], says="no-such-pool")
    flat.write_text("pool: builtin:digits-web\nbudjet: 0.1\n")
    with pytest.raises(KdataError, match=r"unknown option\(s\) \['budjet'\]"):
        load_config(flat)
    flat.write_text("pool: builtin:digits-web\nout: elsewhere\n")  # a flow's OUT is curate: out: or --out
    with pytest.raises(KdataError, match=r"unknown option\(s\) \['out'\]"):
        load_config(flat)


# ------------------------------------------------------------------------------------------------
# generate and distill


def test_text_model_path_names_a_spec_it_cannot_read():
    from kdata.models.hf import text_model_path

    with pytest.raises(KdataError, match=r"^/nope: not a text model spec \(hf:PATH or builtin:text-\*\)$"):
        text_model_path("/nope")


def test_kdata_generate_with_a_non_text_teacher_is_one_line(tmp_path, capsys):
    from kdata.cli import main

    (tmp_path / "p.jsonl").write_text('{"id": "p0", "prompt": "the cat"}\n')
    assert main(["generate", "--teacher", "/nope", "--prompts", str(tmp_path / "p.jsonl"),
                 "--out", str(tmp_path / "g")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["kdata: error: /nope: not a text model spec (hf:PATH or builtin:text-*)"]


@pytest.mark.parametrize("flags,says", [
    (["--teacher", "/nope"], "/nope: not a text model spec (hf:PATH or builtin:text-*)"),
    (["--per-prompt", "0"], "--per-prompt 0: must be ≥ 1"),
    (["--critic", "no-critic", "--student", "builtin:text-student"], "no-critic: --critic directory not found"),
    (["--device", "bogus"], "--device 'bogus': unknown device"),
    (["--distill"], "--distill trains the student on the curated candidates: give --student"),
    (["--teacher", "hf:/no/such/lm"], "/no/such/lm"),
])
def test_bad_generate_input_is_one_line_before_any_flow_run(one_line, tmp_path, flags, says):
    (tmp_path / "p.jsonl").write_text('{"id": "p0", "prompt": "the cat"}\n')
    one_line("generate", ["--prompts", str(tmp_path / "p.jsonl"), "--out", str(tmp_path / "g"), *flags], says=says)
    assert not (tmp_path / "g").exists()


@pytest.mark.parametrize("flags,says", [
    (["--device", "bogus"], "--device 'bogus': unknown device"),
    (["--device", "cuda"], "--device cuda requested but no CUDA device is available"),
    (["--epochs", "0"], "--epochs 0: must be at least 1"),
])
def test_bad_distill_device_and_epochs_are_one_line(one_line, tmp_path, monkeypatch, flags, says):
    if flags[-1] == "cuda":
        import torch

        if torch.cuda.is_available():
            pytest.skip("a CUDA device is present")
    monkeypatch.chdir(tmp_path)
    line = one_line("distill", ["--data", "runs/curated-*", *flags], says=says)
    assert "--batch-size" not in line


def test_generate_flow_refuses_distill_without_a_student(prefect_api, tmp_path):
    gen = importlib.import_module("kdata.flows.generate")
    (tmp_path / "p.jsonl").write_text('{"id": "p0", "prompt": "the cat"}\n')
    state = gen.generate(params={"prompts": str(tmp_path / "p.jsonl"), "teacher": "builtin:text-teacher"},
                         out=str(tmp_path / "g"), run={"device": "cpu"}, distill={}, return_state=True)
    assert state.is_failed() and "--distill trains the student" in state.message
    assert not (tmp_path / "g").exists()

