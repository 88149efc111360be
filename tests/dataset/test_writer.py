"""The dataset writer's guarantees on real files: one writer per OUT (flock, real processes), staging
directories removed only when stale, honest commits, shard sizes ≥ 1, and ``verify`` covering the
shards, the decisions table and every count."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kdata.core.atomic import write_parquet
from kdata.core.errors import KdataError
from kdata.core.lock import acquire, current, exclusive, is_locked, lock_path
from kdata.dataset.writer import (
    MANIFEST,
    Staging,
    build_manifest,
    check_output_dir,
    read_manifest,
    staging_dirs,
    verify,
    write_decisions,
    write_shards,
)

HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from kdata.core.lock import exclusive
    from kdata.dataset.writer import Staging
    out, ready, go = sys.argv[1:4]
    with exclusive(out):
        st = Staging(out)
        (st.path / "marker").write_text("live")
        Path(ready).write_text(str(st.path))
        while not Path(go).exists():
            time.sleep(0.05)
        st.abort()
""")


def start_holder(tmp_path: Path, out: Path) -> tuple[subprocess.Popen, Path, Path]:
    """A real process holding OUT's lock with a live staging directory, until ``go`` appears."""
    ready, go = tmp_path / "ready", tmp_path / "go"
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(out), str(ready), str(go)], stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while not ready.exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.time() < deadline
        time.sleep(0.05)
    return proc, Path(ready.read_text()), go


def dataset(*, kept: int = 5, rejected: int = 3, synthetic: int = 0) -> tuple[pa.Table, pa.Table, dict]:
    """Curated rows (kept originals + synthetic), their decisions table, and the counts."""
    ids = [f"s{i}" for i in range(kept + rejected)]
    rows = pa.table({"sample_id": ids[:kept] + [f"gen{i}" for i in range(synthetic)],
                     "kind": ["original"] * kept + ["synthetic"] * synthetic,
                     "teacher_pred": list(range(kept + synthetic))})
    decisions = pa.table({"sample_id": ids, "decision": ["kept"] * kept + ["rejected"] * rejected,
                          "reason": [None] * kept + ["kd3_low_confidence"] * (rejected - 1) + ["duplicate_of:s0"]})
    counts = {"n_in": kept + rejected, "kept": kept, "rejected": rejected, "quarantined": 0,
              "rejected_by_reason": {"kd3_low_confidence": rejected - 1, "duplicate_of": 1}}
    if synthetic:
        counts.update(generated=synthetic, generated_kept=synthetic, generated_rejected=0)
    return rows, decisions, counts


def write_dataset(out: Path, *, rows_per_shard: int = 2, with_entry: bool = True, **kw) -> dict:
    rows, decisions, counts = dataset(**kw)
    st = Staging(out)
    files = write_shards(rows, st.path, meta={"x": 1}, rows_per_shard=rows_per_shard, row_group_rows=1)
    entry = write_decisions(decisions, st.path / "decisions.parquet")
    manifest = build_manifest(files=files, config={"seed": 0}, config_hash="h" * 64, models={}, counts=counts,
                              decisions=entry if with_entry else None)
    (st.path / MANIFEST).write_text(json.dumps(manifest))
    st.commit()
    return manifest


def edit_manifest(out: Path, fn) -> None:
    m = read_manifest(out)
    fn(m)
    (out / MANIFEST).write_text(json.dumps(m))


# ------------------------------------------------------------------------------------------------
# The lock

def test_a_second_taker_fails_at_once_naming_the_holder_and_sigkill_frees_it(tmp_path):
    out = tmp_path / "out"
    proc, staging, _go = start_holder(tmp_path, out)
    try:
        assert is_locked(out)
        with pytest.raises(KdataError) as e:
            acquire(out)  # at once: a taker that waited would wait for the holder, which never lets go here
        msg = str(e.value)
        assert "\n" not in msg and f"pid {proc.pid} on " in msg and "in use by another kdata run" in msg
        assert "started 20" in msg
        # a Staging here cannot be made and does not touch the live one
        with pytest.raises(KdataError, match=f"pid {proc.pid}"):
            Staging(out)
        assert (staging / "marker").read_text() == "live"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert staging.exists()  # left by the killed run
    assert not is_locked(out)  # the kernel dropped the dead holder's lock
    with exclusive(out):
        assert check_output_dir(out, config_hash="x") == "write"
        assert not staging.exists()  # stale: removed under the lock
    assert not lock_path(out).exists()


def test_lock_is_reentrant_in_its_thread_conflicts_across_threads_and_waits(tmp_path):
    out = tmp_path / "out"
    with exclusive(out) as lk:
        with exclusive(out) as again:
            assert again is lk
        assert lk.held and current(out) is lk
        errors = []
        t = threading.Thread(target=lambda: errors.append(_try(out)))
        t.start()
        t.join()
        assert errors and f"pid {os.getpid()}" in errors[0]
        got = []
        waiter = threading.Thread(target=lambda: got.append(acquire(out, wait=True)))
        waiter.start()
        time.sleep(0.3)
        assert not got  # blocked while held
    waiter.join(10)
    assert got and got[0].held
    got[0].release()
    assert not lock_path(out).exists() and current(out) is None


def _try(out):
    try:
        acquire(out).release()
    except KdataError as exc:
        return str(exc)
    return None


# ------------------------------------------------------------------------------------------------
# Staging and commit

def test_staging_commit_refuses_an_out_filled_meanwhile(tmp_path):
    out = tmp_path / "out"
    st = Staging(out)
    write_parquet(st.path / "data" / "x.parquet", pa.table({"a": [1]}))
    out.mkdir()
    (out / "other.txt").write_text("someone else's")
    with pytest.raises(KdataError, match="result was discarded"):
        st.commit()
    assert sorted(p.name for p in out.iterdir()) == ["other.txt"]
    assert not staging_dirs(out) and not lock_path(out).exists()


def test_staging_leaves_a_live_owners_directory_and_removes_a_dead_ones(tmp_path):
    out = tmp_path / "out"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        import socket

        for name, pid in (("live", sleeper.pid), ("dead", dead.pid)):
            d = tmp_path / f".out.kdata-staging-{name}"
            d.mkdir()
            (d / ".kdata-owner").write_text(json.dumps({"pid": pid, "host": socket.gethostname()}))
        (tmp_path / ".out.kdata-staging-noowner").mkdir()
        st = Staging(out)
        names = sorted(p.name for p in staging_dirs(out))
        assert names == sorted([".out.kdata-staging-live", st.path.name])
        st.abort()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_staging_takes_the_lock_or_uses_the_one_held(tmp_path):
    out = tmp_path / "out"
    st = Staging(out)
    assert is_locked(out)
    st.abort()
    assert not is_locked(out) and not lock_path(out).exists()
    with exclusive(out) as lk:
        st = Staging(out, lock=lk)
        st.commit()
        assert lk.held  # the run's lock outlives the commit
        with pytest.raises(RuntimeError, match="not a held lock"):
            Staging(tmp_path / "elsewhere", lock=lk)
    assert out.is_dir() and not list(out.iterdir())


# ------------------------------------------------------------------------------------------------
# Shards

@pytest.mark.parametrize("kw", [{"rows_per_shard": -1}, {"rows_per_shard": 0}, {"row_group_rows": 0},
                                {"row_group_rows": -5}, {"rows_per_shard": True}, {"rows_per_shard": 2.5}])
def test_write_shards_refuses_shard_sizes_below_one(tmp_path, kw):
    rows, _, _ = dataset(kept=437, rejected=1)
    with pytest.raises(KdataError, match=r"^--row[s-].* must be a whole number ≥ 1$"):
        write_shards(rows, tmp_path, meta={}, **kw)
    assert not list(tmp_path.iterdir())


def test_write_shards_writes_every_row_once(tmp_path):
    rows, _, _ = dataset(kept=437, rejected=1)
    files = write_shards(rows, tmp_path, meta={}, rows_per_shard=100, row_group_rows=7)
    assert [f["rows"] for f in files] == [100, 100, 100, 100, 37]
    back = pa.concat_tables([pq.read_table(tmp_path / f["path"]) for f in files])
    assert back.column("sample_id").to_pylist() == rows.column("sample_id").to_pylist()


# ------------------------------------------------------------------------------------------------
# verify

def test_decisions_are_checksummed_and_an_intact_dataset_verifies(tmp_path):
    out = tmp_path / "out"
    m = write_dataset(out, synthetic=2)
    assert m["decisions"] == {"path": "decisions.parquet", "rows": 8, "bytes": (out / "decisions.parquet").stat().st_size,
                              "sha256": m["decisions"]["sha256"]} and m["decisions_file"] == "decisions.parquet"
    assert verify(out) == []
    assert check_output_dir(out, config_hash="h" * 64) == "done"


def test_another_run_is_named_by_the_options_that_differ_on_one_short_line(tmp_path):
    """The refusal names what differs, each value cut short: a list of 500 shard digests (augment's
    ``source_files``) is its size, not 30 KB of hex."""
    out = tmp_path / "out"
    write_dataset(out, synthetic=2)
    edit_manifest(out, lambda m: m["config"].update(source_files=["a" * 64] * 500))
    mine = {"seed": 1, "source_files": ["b" * 64] * 500}
    with pytest.raises(KdataError) as err:
        check_output_dir(out, config_hash="other", config=mine)
    line = str(err.value)
    assert "(seed 0 there, 1 here; source_files <500 items> there, <500 items> here)" in line, line
    assert len(line) < 300 and "\n" not in line
    with pytest.raises(KdataError, match=r"\(config hhhhhhhhhhhh, this run other\)"):  # no config given: the hashes
        check_output_dir(out, config_hash="other")


def test_a_byte_flipped_decisions_table_fails_its_checksum(tmp_path):
    out = tmp_path / "out"
    write_dataset(out)
    data = bytearray((out / "decisions.parquet").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (out / "decisions.parquet").write_bytes(bytes(data))
    assert verify(out) == [f"{out / 'decisions.parquet'}: sha256 mismatch (file changed since it was written)"]
    with pytest.raises(KdataError, match=r"holds this run but it is damaged: .*decisions.parquet: sha256 mismatch.*"
                                         r"delete .* and rerun"):
        check_output_dir(out, config_hash="h" * 64)


def test_a_rewritten_decisions_table_with_a_fresh_checksum_fails_on_counts_and_ids(tmp_path):
    out = tmp_path / "out"
    write_dataset(out)
    _, decisions, _ = dataset()
    flipped = decisions.set_column(1, "decision", pa.array(["kept"] * 4 + ["rejected"] * 4))  # s4 kept → rejected
    flipped = flipped.set_column(2, "reason", pa.array([None] * 4 + ["kd3_low_confidence"] * 3 + ["duplicate_of:s0"]))
    entry = write_decisions(flipped, out / "decisions.parquet")
    edit_manifest(out, lambda m: m.update(decisions=entry))
    problems = verify(out)
    assert any("holds 4 kept but the manifest says 5" in p for p in problems), problems


def test_kept_ids_swapped_with_counts_intact_are_caught(tmp_path):
    out = tmp_path / "out"
    write_dataset(out, with_entry=False)
    _, decisions, _ = dataset()
    d = decisions.to_pylist()
    d[0], d[5] = {**d[5], "sample_id": "s0"}, {**d[0], "sample_id": "s5"}  # s0 now rejected, s5 now kept
    write_decisions(pa.Table.from_pylist(d), out / "decisions.parquet")
    problems = verify(out)
    assert any("1 kept sample(s) are not in the shards (e.g. 's5')" in p for p in problems), problems


@pytest.mark.parametrize("tamper, expected", [
    (lambda m: m.update(files=[]), "lists no shard files but its counts say 7 rows were kept"),
    (lambda m: m["counts"].update(n_in=9), "counts do not add up: n_in 9"),
    (lambda m: m["counts"].update(n_in=9, rejected=4, rejected_by_reason={"kd3_low_confidence": 4}),
     "holds 8 rows (n_in) but the manifest says 9"),
    (lambda m: m["files"][0].update(path="../../etc/passwd"), "points outside the dataset"),
    (lambda m: m["files"][0].update(rows=1), "holds 2 rows, manifest says 1"),
    (lambda m: m["counts"].update(generated_kept=0), "its shards hold 7 rows but its counts say 5"),
    (lambda m: m["counts"].update(kept=7, rejected=1, generated_kept=0, rejected_by_reason={"duplicate_of": 1}),
     "holds 5 kept but the manifest says 7"),
    (lambda m: m["files"][0].update(rows="abc"), "bytes, rows or sha256 has the wrong type"),
    (lambda m: m["counts"].update(rejected_by_reason={"x": "1"}), "'rejected_by_reason' must map each reason"),
    (lambda m: m["counts"].update(rejected_by_reason=["x"]), "'rejected_by_reason' must map each reason"),
    (lambda m: m["counts"].update(generated_kept="x"), "'generated_kept' must be a whole number"),
    (lambda m: m.update(card=5), "'card' is not a data card entry"),
    (lambda m: m.update(card={"path": "README.md", "files": [{"path": "/tmp/x", "sha256": "0"}]}),
     "does not name a file of the dataset's own folder"),
    (lambda m: m.pop("decisions"), None),  # an older manifest: no checksum, counts still checked → intact
])
def test_manifest_tampering_is_caught(tmp_path, tamper, expected):
    out = tmp_path / "out"
    write_dataset(out, synthetic=2)
    edit_manifest(out, tamper)
    problems = verify(out)
    if expected is None:
        assert problems == []
    else:
        assert problems and any(expected in p for p in problems), problems


def test_an_unlisted_shard_and_a_manifest_that_is_not_an_object_are_caught(tmp_path):
    """A copied shard under data/ would be read by pandas or HF datasets as more rows; a manifest that is
    valid JSON but not an object, or not UTF-8, is one line naming it."""
    out = tmp_path / "out"
    m = write_dataset(out)
    shard = out / m["files"][0]["path"]
    (shard.parent / "train-00000-of-00002.parquet").write_bytes(shard.read_bytes())
    assert verify(out) == [f"{shard.parent / 'train-00000-of-00002.parquet'}: not listed in the manifest (readers of "
                           "data/ would read its rows as the dataset's)"]
    (out / "manifest.json").write_text("[]")
    assert verify(out) == [f"{out / 'manifest.json'}: not a kdata manifest (a JSON list, not an object)"]
    (out / "manifest.json").write_bytes(b"\xff\xfe garbage")
    [problem] = verify(out)
    assert problem.startswith(f"{out / 'manifest.json'}: unreadable manifest ('utf-8' codec")


def test_a_missing_decisions_table_fails_even_without_a_checksum_entry(tmp_path):
    out = tmp_path / "out"
    write_dataset(out, with_entry=False)
    (out / "decisions.parquet").unlink()
    assert verify(out) == [f"{out / 'decisions.parquet'}: missing (every kdata dataset has a decisions table)"]


def test_nothing_kept_verifies_with_an_empty_shard(tmp_path):
    out = tmp_path / "out"
    write_dataset(out, kept=0, rejected=3)
    assert verify(out) == []
    edit_manifest(out, lambda m: m.update(files=[]))
    assert verify(out) == []  # counts say kept 0: an empty file list is consistent


def test_every_spelling_of_out_shares_one_lock(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "alias").symlink_to(real)
    with exclusive(tmp_path / "alias" / "out") as lk:
        st = Staging(real / "out")  # the same directory: uses the lock held, takes no second one
        assert st.lock is lk
        st.commit()
        errors = []
        t = threading.Thread(target=lambda: errors.append(_try(real / "out")))
        t.start()
        t.join()
        assert errors[0] and "in use by another kdata run" in errors[0]
    assert not list(real.glob(".*kdata-lock")) and (real / "out").is_dir()


def test_another_threads_live_staging_is_not_removed(tmp_path):
    out = tmp_path / "out"
    with exclusive(out):
        st = Staging(out)
        seen = []
        t = threading.Thread(target=lambda: seen.append(check_output_dir(out, config_hash="x")))
        t.start()
        t.join()
        assert seen == ["write"] and st.path.is_dir()  # not this thread's lock: nothing removed
        st.abort()


def test_out_that_is_the_current_directory_is_refused(tmp_path, monkeypatch):
    """An empty OUT is replaced whole by the finished dataset: OUT = . would leave the shell in a
    deleted directory, so it is one line before any work (a finished dataset in . stays readable)."""
    out = tmp_path / "here"
    out.mkdir()
    monkeypatch.chdir(out)
    with pytest.raises(KdataError, match=r"--out is the current directory \(or holds it\)"):
        check_output_dir(".", config_hash="h" * 64)
    monkeypatch.chdir(tmp_path)
    assert check_output_dir(out, config_hash="h" * 64) == "write"
