"""sha256 of large files, remembered by stat signature so that unchanged files are not re-read.

Loading a model hashes its weight files (the digest enters the score-cache key and the manifest);
for a 7B LLM that is ~14 GB read on every load. ``sha256_file_memo`` returns exactly what
``sha256_file`` returns, but trusts a recorded digest while the file's stat signature — resolved
path, size, ``st_mtime_ns``, inode, device, the fields git's index trusts — is unchanged. Two levels:
a bounded in-process dict, and one small JSON file per path under ``$KDATA_CACHE/digests`` (written
atomically; skipped silently where the cache cannot be written). ``rm -rf $KDATA_CACHE/digests``
forgets them all.

A digest is recorded only when the file's stat is the same after hashing as before, and its mtime
is older than the hash's start by more than ``RACY_NS`` (git's "racily clean" rule): a write during
or after the hash then gets a later mtime, whatever the filesystem's timestamp granularity below that
margin, so a same-size rewrite cannot keep the old signature. Use it for weights a loader identifies,
never for files a command verifies (dataset shards, a run's manifest): those must be re-read.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
from collections import OrderedDict
from pathlib import Path

from kdata.core.atomic import sha256_file, write_json
from kdata.core.paths import cache_root

MIN_BYTES = 1 << 20  # smaller files are just hashed: a memo entry would cost about as much
RACY_NS = 2_000_000_000  # mtimes this close to the hash's start are not trusted (coarse clocks, FAT's 2 s)
MEMO_ENTRIES = 4096  # in-process level, least recently used dropped first
DIGESTS_DIR = "digests"

_HEX = re.compile(r"[0-9a-f]{64}")
_memo: OrderedDict[tuple, str] = OrderedDict()
_memo_lock = threading.Lock()


def sha256_file_memo(path: str | os.PathLike) -> str:
    """Hex sha256 of ``path``, as ``sha256_file`` gives it, read only when the stat signature is new."""
    path = Path(path).resolve()
    started = time.time_ns()
    sig = signature(path)
    if sig[1] < MIN_BYTES:
        return sha256_file(path)
    digest = _recall(sig)
    if digest is None:
        digest = hash_and_record(path, sig, started_ns=started)
    return digest


def signature(path: Path) -> tuple:
    """(resolved path, size, mtime in ns, inode, device): what a recorded digest is trusted by."""
    st = os.stat(path)
    return (str(path), st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)


def hash_and_record(path: Path, sig: tuple, *, started_ns: int) -> str:
    """Hash ``path`` and record the digest under ``sig`` (taken at ``started_ns`` or later) when the
    file is still ``sig`` afterwards and its mtime is older than ``started_ns - RACY_NS``."""
    digest = sha256_file(path)
    if signature(path) == sig and sig[2] < started_ns - RACY_NS:
        _remember(sig, digest)
        try:
            write_json(entry_path(sig[0]), {"signature": list(sig), "sha256": digest})
        except OSError:  # read-only or full cache: the in-process level still serves this process
            pass
    return digest


def entry_path(resolved: str) -> Path:
    """The on-disk memo file of one resolved path (its signature is stored inside and checked)."""
    return cache_root() / DIGESTS_DIR / (hashlib.sha256(resolved.encode()).hexdigest() + ".json")


def forget_in_process() -> None:
    """Drop the in-process level (the on-disk level stays)."""
    with _memo_lock:
        _memo.clear()


def _recall(sig: tuple) -> str | None:
    """The digest recorded for ``sig`` (in process, else on disk), or None; a corrupt entry is None."""
    with _memo_lock:
        if sig in _memo:
            _memo.move_to_end(sig)
            return _memo[sig]
    try:
        entry = json.loads(entry_path(sig[0]).read_text())
        digest = entry["sha256"]
        if entry["signature"] != list(sig) or not _HEX.fullmatch(digest):
            return None
    except (OSError, ValueError, TypeError, KeyError):
        return None
    _remember(sig, digest)
    return digest


def _remember(sig: tuple, digest: str) -> None:
    with _memo_lock:
        _memo[sig] = digest
        _memo.move_to_end(sig)
        while len(_memo) > MEMO_ENTRIES:
            _memo.popitem(last=False)
