"""What a run writes can be trusted: concurrent runs into one OUT, runs killed mid-write, tampered
outputs and nonsense shard sizes, each tried for real (built-in pool and models, real processes,
real files) against ``kdata select / inspect / train / card`` and the library calls behind them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kdata.core.atomic import read_parquet
from kdata.core.errors import KdataError
from kdata.core.lock import is_locked, lock_path
from kdata.dataset.writer import MANIFEST, read_manifest, staging_dirs, verify
from kdata.pipeline.config import RunOptions, SelectConfig
from kdata.pipeline.run import run_select

A = {"method": "random", "budget": "100", "seed": 1}
B = {"method": "random", "budget": "150", "seed": 2}


def cli_args(cfg: dict) -> list[str]:
    return ["--method", cfg["method"], "--budget", cfg["budget"], "--seed", str(cfg["seed"]), "--device", "cpu",
            "--quiet"]


def kdata(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kdata.cli", *args], capture_output=True, text=True, timeout=300,
                          check=False, env=os.environ.copy())


def kdata_here(capsys, *args: str) -> tuple[int, str, str]:
    """The CLI entry point in this process (the same code path as the console script): (code, out, err)."""
    from kdata.cli import main

    capsys.readouterr()
    code = main(list(args))
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def start_kdata(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "kdata.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=os.environ.copy())


def one_line_error(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kdata: error: "), stderr
    return lines[0]


def nothing_left_beside(out: Path) -> None:
    """No staging directory and no lock file of OUT remain."""
    assert not staging_dirs(out), staging_dirs(out)
    assert not lock_path(out).exists()


# A real process that takes OUT's lock (as the pipeline does for a whole run), opens a staging
# directory and writes a shard into it, signals ``ready``, then waits for ``go`` before
# finishing a real run under the same lock.
HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import pyarrow as pa
    from kdata.core.lock import exclusive
    from kdata.dataset.writer import Staging, write_shards
    from kdata.pipeline.config import RunOptions, SelectConfig
    from kdata.pipeline.run import run_select
    out, ready, go, seed = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
    with exclusive(out) as lock:
        st = Staging(out, lock=lock)
        write_shards(pa.table({"sample_id": ["a", "b"]}), st.path, meta={})
        ready.write_text(str(st.path))
        while not go.exists():
            time.sleep(0.05)
        st.abort()
        rep = run_select(SelectConfig(method="random", budget="100", seed=seed), out=out,
                         opts=RunOptions(device="cpu"))
        print(rep.status)
""")


def start_holder(tmp_path: Path, out: Path, *, seed: int = 1) -> tuple[subprocess.Popen, Path, Path]:
    ready, go = tmp_path / "ready", tmp_path / "go"
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(out), str(ready), str(go), str(seed)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not ready.exists():
        assert proc.poll() is None, proc.stderr.read()
        assert time.time() < deadline, "holder never took the lock"
        time.sleep(0.05)
    return proc, Path(ready.read_text()), go


@pytest.fixture(scope="module")
def complete_run(tmp_path_factory, builtin_models) -> Path:
    out = tmp_path_factory.mktemp("reliability") / "out"
    rep = run_select(SelectConfig(**A), out=str(out), opts=RunOptions(device="cpu"))
    assert rep.status == "written" and verify(out) == []
    return out


# ------------------------------------------------------------------------------------------------
# Concurrent runs

def test_a_run_on_a_locked_out_fails_at_once_naming_the_holder(tmp_path, builtin_models):
    out = tmp_path / "out"
    holder, staging, go = start_holder(tmp_path, out, seed=1)
    try:
        second = kdata("select", "--out", str(out), *cli_args(B))
        assert second.returncode == 2, second.stderr
        line = one_line_error(second.stderr)
        assert f"{out}: in use by another kdata run (pid {holder.pid} on " in line and "started " in line
        assert "written" not in second.stdout
        assert staging.is_dir() and list(staging.glob("data/*.parquet"))  # the live run's staging untouched
        assert not out.exists()
    finally:
        go.write_text("go")
        stdout, stderr = holder.communicate(timeout=300)
    assert holder.returncode == 0 and stdout.strip() == "written", stderr
    assert verify(out) == [] and read_manifest(out)["config"]["seed"] == 1
    nothing_left_beside(out)
    again = kdata("select", "--out", str(out), *cli_args(B))
    assert again.returncode == 2 and "already holds a different run" in one_line_error(again.stderr)


@pytest.mark.parametrize("second", [B, A], ids=["different-config", "same-config"])
def test_two_racing_runs_leave_exactly_one_complete_verifiable_run(tmp_path, builtin_models, second):
    out = tmp_path / "out"
    procs = [start_kdata("select", "--out", str(out), *cli_args(cfg)) for cfg in (A, second)]
    results = [(p, *p.communicate(timeout=300)) for p in procs]
    written = [i for i, (p, so, _) in enumerate(results) if p.returncode == 0 and so.startswith("kdata: written")]
    assert len(written) == 1, [(p.returncode, so, se) for p, so, se in results]
    for i, (p, so, se) in enumerate(results):
        if i in written:
            continue
        if p.returncode == 0:  # same config, after the first finished
            assert second is A and so.startswith("kdata: already complete"), so
        else:  # refused: the lock holder named, or the finished run found — never a traceback
            one_line_error(se)
    assert verify(out) == []
    winner = (A, second)[written[0]]
    assert read_manifest(out)["config"]["seed"] == winner["seed"]
    assert read_manifest(out)["counts"]["kept"] == int(winner["budget"])
    nothing_left_beside(out)


def test_a_sigkilled_runs_staging_is_removed_by_the_next_run(tmp_path, builtin_models):
    out = tmp_path / "out"
    holder, staging, _go = start_holder(tmp_path, out)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert staging.is_dir() and list(staging.glob("data/*.parquet"))  # left behind mid-write
    assert not out.exists() and not is_locked(out)  # the kernel dropped the dead run's lock
    rep = run_select(SelectConfig(**A), out=str(out), opts=RunOptions(device="cpu"))
    assert rep.status == "written" and verify(out) == []
    assert not staging.exists()
    nothing_left_beside(out)


# ------------------------------------------------------------------------------------------------
# Cache entries written concurrently

WRITER = textwrap.dedent("""
    import sys
    import pyarrow as pa
    from kdata.core.atomic import write_parquet
    path, n = sys.argv[1], int(sys.argv[2])
    for _ in range(25):
        write_parquet(path, pa.table({"x": list(range(n))}), row_group_size=1000)
""")


def test_concurrent_writers_of_one_cache_entry_never_expose_a_partial_file(tmp_path):
    entry = tmp_path / "cache" / "key.parquet"
    sizes = (10_000, 30_000, 60_000)
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(entry), str(n)]) for n in sizes]
    reads = 0
    while any(p.poll() is None for p in procs):
        if entry.exists():
            assert read_parquet(entry).num_rows in sizes  # a whole file, old or new, never a torn one
            reads += 1
    assert all(p.returncode == 0 for p in procs) and reads
    assert pq.read_table(entry).num_rows in sizes
    assert [p.name for p in entry.parent.iterdir()] == ["key.parquet"]  # no temporary left


ONCE = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from kdata.core.lock import exclusive
    entry, log = Path(sys.argv[1]), Path(sys.argv[2])
    with exclusive(entry, wait=True):
        if not entry.exists():
            with open(log, "a") as fh:
                fh.write("computed\\n")
            time.sleep(0.5)
            entry.write_text("result")
""")


def test_a_cache_entry_held_with_wait_is_computed_once(tmp_path):
    entry, log = tmp_path / "key.parquet", tmp_path / "log"
    procs = [subprocess.Popen([sys.executable, "-c", ONCE, str(entry), str(log)]) for _ in range(3)]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    assert log.read_text() == "computed\n" and entry.read_text() == "result"
    assert not lock_path(entry).exists()


# ------------------------------------------------------------------------------------------------
# Tampering: caught by verify, inspect, card, train and a rerun

def _rewrite_decisions(out: Path, fn) -> None:
    path = out / "decisions.parquet"
    pq.write_table(fn(pq.read_table(path)), path)


def _flip_first_rejected(t: pa.Table) -> pa.Table:
    dec = t.column("decision").to_pylist()
    dec[dec.index("rejected")] = "kept"
    return t.set_column(t.schema.get_field_index("decision"), "decision", pa.array(dec, pa.string()))


def _edit_manifest(out: Path, fn) -> None:
    m = json.loads((out / MANIFEST).read_text())
    fn(m)
    (out / MANIFEST).write_text(json.dumps(m))


def _flip_shard_byte(out: Path) -> None:
    shard = next((out / "data").glob("*.parquet"))
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))


TAMPER = {
    "100-decisions-dropped": (lambda o: _rewrite_decisions(o, lambda t: t.slice(0, t.num_rows - 100)),
                              "decisions.parquet"),
    "rejected-flipped-to-kept": (lambda o: _rewrite_decisions(o, _flip_first_rejected), "decisions.parquet"),
    "decisions-deleted": (lambda o: (o / "decisions.parquet").unlink(), "decisions.parquet: missing"),
    "files-emptied": (lambda o: _edit_manifest(o, lambda m: m.update(files=[])), "lists no shard files"),
    "n_in-edited": (lambda o: _edit_manifest(o, lambda m: m["counts"].update(n_in=m["counts"]["n_in"] + 1)),
                    "counts do not add up"),
    "n_in-and-rejected-edited": (lambda o: _edit_manifest(o, lambda m: m["counts"].update(
        n_in=m["counts"]["n_in"] + 1, rejected=m["counts"]["rejected"] + 1,
        rejected_by_reason={k: v + 1 for k, v in m["counts"]["rejected_by_reason"].items()})),
        "but the manifest says"),
    "shard-byte-flipped": (_flip_shard_byte, "sha256 mismatch"),
    "shards-deleted": (lambda o: shutil.rmtree(o / "data"), ".parquet: missing"),
}


@pytest.fixture
def tampered(request, complete_run, tmp_path) -> tuple[Path, str]:
    out = tmp_path / "out"
    shutil.copytree(complete_run, out)
    assert verify(out) == []
    tamper, expected = TAMPER[request.param]
    tamper(out)
    return out, expected


@pytest.mark.parametrize("tampered", list(TAMPER), indirect=True)
def test_tampering_is_caught_by_verify_inspect_card_train_and_rerun(tampered):
    from kdata.report.card import regenerate
    from kdata.report.inspect import summarise
    from kdata.training.train import TrainConfig, run_train

    out, expected = tampered
    problems = verify(out)
    assert problems and expected in problems[0], problems
    integ = summarise(out)["integrity"]
    assert not integ["ok"] and integ["problems"][0] == problems[0]
    with pytest.raises(KdataError, match="integrity check failed, not writing a card") as e:
        regenerate(out)
    assert e.value.exit_code == 1
    with pytest.raises(KdataError, match="integrity check failed, not training on it") as e:
        run_train(shards=str(out), student="builtin:digits-student", eval=None, config=TrainConfig(epochs=1))
    assert expected in str(e.value) and "--no-verify" in str(e.value)
    with pytest.raises(KdataError, match=r"holds this run but it is damaged") as e:
        run_select(SelectConfig(**A), out=str(out), opts=RunOptions(device="cpu"))
    assert e.value.exit_code == 2 and expected in str(e.value) and f"delete {out} and rerun" in str(e.value)
    nothing_left_beside(out)


def test_the_cli_refuses_a_damaged_dataset_with_one_line(complete_run, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(complete_run, out)
    _flip_shard_byte(out)
    code, so, _ = kdata_here(capsys, "inspect", str(out))
    assert code == 1 and "integrity: FAILED" in so and "sha256 mismatch" in so
    code, _, se = kdata_here(capsys, "train", str(out), "--epochs", "1", "--device", "cpu", "--quiet")
    assert code == 2 and "integrity check failed, not training on it" in one_line_error(se)
    code, so, se = kdata_here(capsys, "select", "--out", str(out), *cli_args(A))
    assert code == 2 and "holds this run but it is damaged" in one_line_error(se)
    assert "written" not in so and "already complete" not in so
    code, _, se = kdata_here(capsys, "card", str(out))
    assert code == 1 and "integrity check failed" in one_line_error(se)


def test_train_no_verify_skips_the_check(complete_run, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(complete_run, out)
    _edit_manifest(out, lambda m: m["counts"].update(n_in=m["counts"]["n_in"] + 1))  # shards themselves intact
    code, so, se = kdata_here(capsys, "train", str(out), "--epochs", "1", "--device", "cpu", "--json",
                              "--no-verify")
    assert code == 0, se
    log = json.loads(so)
    assert log["n_train"] == 100 and log["verified"] is False


def test_train_verifies_an_intact_dataset_first(complete_run):
    from kdata.training.train import TrainConfig, run_train

    log = run_train(shards=str(complete_run / "data"), student="builtin:digits-student", eval=None,
                    config=TrainConfig(epochs=1, device="cpu"))
    assert log["verified"] is True and log["n_train"] == 100


def test_a_rerun_into_a_complete_out_verifies_then_reports_complete(complete_run):
    rep = run_select(SelectConfig(**A), out=str(complete_run), opts=RunOptions(device="cpu"))
    assert rep.status == "already complete" and rep.counts["kept"] == 100


# ------------------------------------------------------------------------------------------------
# Shard sizes

@pytest.mark.parametrize("value", [-1, 0])
def test_rows_per_shard_below_one_is_refused_before_any_work(tmp_path, builtin_models, value, capsys):
    out = tmp_path / "out"
    with pytest.raises(KdataError, match=rf"--rows-per-shard {value}: must be"):
        run_select(SelectConfig(**A, rows_per_shard=value), out=str(out), opts=RunOptions(device="cpu"))
    with pytest.raises(KdataError, match=rf"--row-group-rows {value}: must be"):
        run_select(SelectConfig(**A, row_group_rows=value), out=str(out), opts=RunOptions(device="cpu"))
    code, _, se = kdata_here(capsys, "select", "--out", str(out), *cli_args(A), "--rows-per-shard", str(value))
    assert code == 2 and f"--rows-per-shard {value}" in one_line_error(se)
    assert not out.exists() and os.listdir(tmp_path) == []
