"""kdata.core.digests: a stat-keyed sha256 memo that returns exactly what sha256_file returns."""

from __future__ import annotations

import json
import os
import time

import pytest

from kdata.core import digests
from kdata.core.atomic import sha256_file
from kdata.core.digests import entry_path, forget_in_process, hash_and_record, sha256_file_memo, signature

FAKE = "f" * 64
SIZE = digests.MIN_BYTES + 4096
OLD_NS = 1_600_000_000 * 10**9  # an mtime well outside the racy window


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KDATA_CACHE", str(tmp_path / "cache"))
    forget_in_process()
    yield tmp_path / "cache"
    forget_in_process()


def weights(path, fill: bytes, *, size: int = SIZE, mtime_ns: int = OLD_NS):
    path.write_bytes(fill * size)
    os.utime(path, ns=(mtime_ns, mtime_ns))
    return path


def rewrite_in_place(path, fill: bytes):
    """Same size, same inode, mtime put back: a change the stat signature cannot see (proves the memo answered)."""
    st = path.stat()
    with open(path, "r+b") as fh:
        fh.write(fill * st.st_size)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_the_digest_is_sha256_file_s_and_the_disk_entry_is_trusted_until_the_file_changes(cache, tmp_path):
    f = weights(tmp_path / "model.safetensors", b"a")
    assert sha256_file_memo(f) == sha256_file(f)
    entry = entry_path(str(f.resolve()))
    assert json.loads(entry.read_text())["sha256"] == sha256_file(f)

    forget_in_process()  # the disk level answers: a planted value comes back unread
    data = json.loads(entry.read_text())
    entry.write_text(json.dumps({**data, "sha256": FAKE}))
    assert sha256_file_memo(f) == FAKE

    weights(f, b"b", mtime_ns=OLD_NS + 10**9)  # new content and mtime: the true digest, recorded again
    assert sha256_file_memo(f) == sha256_file(f) != FAKE
    assert json.loads(entry.read_text())["sha256"] == sha256_file(f)


def test_the_in_process_level_answers_without_the_disk(cache, tmp_path):
    f = weights(tmp_path / "w.bin", b"a")
    first = sha256_file_memo(f)
    entry_path(str(f.resolve())).unlink()
    rewrite_in_place(f, b"z")
    assert sha256_file_memo(f) == first != sha256_file(f)
    forget_in_process()
    assert sha256_file_memo(f) == sha256_file(f)


def test_a_corrupt_entry_is_ignored_and_rewritten(cache, tmp_path):
    f = weights(tmp_path / "w.bin", b"a")
    entry = entry_path(str(f.resolve()))
    for junk in ("not json", "[1, 2]", json.dumps({"signature": list(signature(f.resolve())), "sha256": "x"})):
        forget_in_process()
        entry.parent.mkdir(parents=True, exist_ok=True)
        entry.write_text(junk)
        assert sha256_file_memo(f) == sha256_file(f)
        assert json.loads(entry.read_text())["sha256"] == sha256_file(f)


def test_an_unwritable_cache_falls_back_to_the_in_process_memo(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("KDATA_CACHE", str(blocker / "cache"))  # cannot be created, even by root
    forget_in_process()
    f = weights(tmp_path / "w.bin", b"a")
    first = sha256_file_memo(f)
    assert first == sha256_file(f)
    rewrite_in_place(f, b"z")
    assert sha256_file_memo(f) == first
    forget_in_process()


def test_a_file_changed_while_hashed_is_not_recorded(cache, tmp_path):
    f = weights(tmp_path / "w.bin", b"a")
    started = time.time_ns()
    sig = signature(f.resolve())
    weights(f, b"b", size=SIZE + 1)  # the write lands between the stat and the end of the hash
    assert hash_and_record(f.resolve(), sig, started_ns=started) == sha256_file(f)
    assert not entry_path(str(f.resolve())).exists()
    assert sha256_file_memo(f) == sha256_file(f)  # the new signature: hashed afresh, then recorded


def test_a_racily_new_file_and_a_small_file_are_not_recorded(cache, tmp_path):
    fresh = tmp_path / "fresh.bin"
    fresh.write_bytes(b"a" * SIZE)  # mtime now: a same-size rewrite within the clock's tick would go unseen
    small = weights(tmp_path / "config.json", b"{}", size=100)
    for f in (fresh, small):
        assert sha256_file_memo(f) == sha256_file(f)
        assert not entry_path(str(f.resolve())).exists()
    rewrite_in_place(fresh, b"z")
    assert sha256_file_memo(fresh) == sha256_file(fresh)


def test_the_resolved_path_keys_the_entry(cache, tmp_path):
    f = weights(tmp_path / "w.bin", b"a")
    link = tmp_path / "link.bin"
    link.symlink_to(f)
    assert sha256_file_memo(link) == sha256_file(f)
    assert entry_path(str(f.resolve())).is_file()
