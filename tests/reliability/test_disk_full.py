"""Disk full: ``kdata select`` with OUT, or with the cache, on a tiny tmpfs.

Needs root and a working ``mount -t tmpfs`` (skipped otherwise, saying why). Promised: the run
fails with exit 1 and one stderr line, no traceback; nothing half-written is left (no OUT, no
staging directory, no lock file, no partial score-cache entry a later run would trust); and once
there is room, a rerun writes the same dataset as a run that never ran out of space.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from kdata.dataset.writer import staging_dirs, verify
from tests.reliability.test_crash import ARGS, CACHE_PARTS, cli_here, digests

PAGE = 4096
BIG_KB = 64 * 1024


def _mount(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["mount", *args], capture_output=True, text=True, check=False)


@contextmanager
def tmpfs(path: Path, size_kb: int) -> Iterator[Path]:
    """A tmpfs of ``size_kb`` KiB mounted on ``path`` for the block (skip when that is impossible)."""
    if os.geteuid() != 0:
        pytest.skip("disk-full tests need root to mount a small tmpfs")
    if shutil.which("mount") is None or shutil.which("umount") is None:
        pytest.skip("disk-full tests need mount/umount")
    path.mkdir(parents=True, exist_ok=True)
    done = _mount("-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(path))
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True, check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def resize(path: Path, size_kb: int) -> None:
    done = _mount("-o", f"remount,size={size_kb}k", str(path))
    assert done.returncode == 0, done.stderr


def used_kb(path: Path) -> int:
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize // 1024


def select(out: Path, cache: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kdata.cli", "select", "--out", str(out), *ARGS],
                          capture_output=True, text=True, timeout=300, check=False,
                          env={**os.environ, "KDATA_CACHE": str(cache)})


def one_line_no_space(done: subprocess.CompletedProcess) -> None:
    assert done.returncode == 1, (done.returncode, done.stdout, done.stderr)  # a runtime failure
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kdata: error: "), done.stderr
    assert "no space left on device" in lines[0].lower() or "errno 28" in lines[0].lower(), lines[0]
    assert "Traceback" not in done.stderr and "written" not in done.stdout


@pytest.fixture(scope="module")
def ref(tmp_path_factory, builtin_models):
    """A cache template (built-in models and pool, no scores), the reference run's digests and
    sizes, and the size of the score-cache entries it wrote."""
    from kdata.pools.spec import open_pool

    open_pool("builtin:digits-web")
    root = tmp_path_factory.mktemp("diskfull")
    session = Path(os.environ["KDATA_CACHE"])
    template = root / "template"
    for part in CACHE_PARTS:
        if (session / part).is_dir():
            shutil.copytree(session / part, template / part)
    warm = root / "warm"
    shutil.copytree(template, warm)
    out = root / "ref"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KDATA_CACHE", str(warm))
        from kdata.cli import main

        assert main(["select", "--out", str(out), *ARGS]) == 0
    sizes = {p: (out / p).stat().st_size for p in digests(out)}
    scores_bytes = sum(p.stat().st_size for p in (warm / "scores").iterdir())
    return {"template": template, "warm": warm, "digests": digests(out), "sizes": sizes,
            "scores_bytes": scores_bytes}


def _kb(n_bytes: int) -> int:
    return -(-n_bytes // PAGE) * PAGE // 1024


@pytest.mark.parametrize("room", ["half-a-shard", "shards-and-decisions"])
def test_out_on_a_full_disk_fails_with_one_line_and_leaves_nothing(ref, room, tmp_path, capsys):
    sizes = ref["sizes"]
    shards = sum(v for k, v in sizes.items() if k.startswith("data/"))
    size_kb = (_kb(shards // 2) if room == "half-a-shard"
               else sum(_kb(v) for v in sizes.values()) + 16)  # the card or the manifest does not fit
    with tmpfs(tmp_path / "disk", size_kb) as disk:
        out = disk / "out"
        one_line_no_space(select(out, ref["warm"]))
        assert sorted(os.listdir(disk)) == []  # no OUT, no staging directory, no lock file
        resize(disk, BIG_KB)
        code, stdout, stderr = cli_here(capsys, ref["warm"], "select", "--out", str(out), *ARGS)
        assert code == 0 and stdout.startswith("kdata: written"), stderr
        assert verify(out) == [] and digests(out) == ref["digests"]
        assert sorted(os.listdir(disk)) == ["out"] and not staging_dirs(out)


def test_cache_on_a_full_disk_fails_with_one_line_and_trusts_no_partial_entry(ref, tmp_path, capsys):
    with tmpfs(tmp_path / "cache", BIG_KB) as cache:
        for part in os.listdir(ref["template"]):
            shutil.copytree(ref["template"] / part, cache / part)
        # room for about half of the score-cache entries this run writes
        resize(cache, used_kb(cache) + _kb(ref["scores_bytes"] // 2))
        out = tmp_path / "out"
        one_line_no_space(select(out, cache))
        assert not out.exists() and not staging_dirs(out)
        scores = cache / "scores"
        left = sorted(p.name for p in scores.iterdir()) if scores.is_dir() else []
        assert not [n for n in left if n.startswith(".")], left  # no temporary file, no lock file
        done = [n for n in left if n.endswith(".quarantine.json")]  # an entry's completion marker
        assert len(done) < 4, left
        for name in done:  # a marked entry is whole; an unmarked one is never read
            marker = json.loads((scores / name).read_text())
            table = pq.read_table(scores / name.replace(".quarantine.json", ".parquet"))
            assert table.num_rows == marker["n_in"] - len(marker["quarantined"])
        resize(cache, BIG_KB)  # the same cache, now with room
        code, stdout, stderr = cli_here(capsys, cache, "select", "--out", str(out), *ARGS)
        assert code == 0 and stdout.startswith("kdata: written"), stderr
        assert verify(out) == [] and digests(out) == ref["digests"]


def test_a_lock_taken_on_a_full_disk_holds_and_leaves_no_file(tmp_path):
    """Recording the holder in a lock file needs a block; on a full disk the lock is still taken
    (unrecorded) and its file removed on release — before, ENOSPC escaped ``acquire`` with the
    descriptor open and ``.<name>.kdata-lock`` left in the cache."""
    from kdata.core.lock import acquire, lock_path

    with tmpfs(tmp_path / "full", 64) as disk:
        fd = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT)
        with pytest.raises(OSError, match="No space"):
            while True:
                os.write(fd, b"\0" * PAGE)
        os.close(fd)
        lock = acquire(disk / "entry.parquet")
        assert lock.held and lock_path(disk / "entry.parquet").exists()
        child = subprocess.run([sys.executable, "-c", "import sys; from kdata.core.lock import acquire\n"
                                f"acquire({str(disk / 'entry.parquet')!r})"], capture_output=True, text=True)
        assert "in use by another kdata run" in child.stderr  # the flock is real
        lock.release()
        assert sorted(p.name for p in disk.iterdir()) == ["filler"]
