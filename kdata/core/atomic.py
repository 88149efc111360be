"""Atomic file writes: write to a temporary name in the same directory, fsync, rename.

Race-free by construction: every writer gets its own temporary name (``mkstemp``) and
``os.replace`` swaps a complete file in, so concurrent writers of one path (two runs filling the
same score-cache entry) never interleave bytes; a reader sees the old file or one whole new file,
and the last writer wins. Cache entries are keyed by content, so the writers agree on what they
write; to avoid computing an entry twice, hold ``kdata.core.lock.exclusive(path, wait=True)``.
Readers of such an entry use ``read_parquet`` (one open descriptor: one whole file).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from kdata.core.crashpoints import crash_after


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600; finished files get ordinary permissions
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        crash_after(tmp)
        os.replace(tmp, path)
        fsync_dir(path.parent)
        crash_after(path)
    finally:
        if tmp.exists():
            tmp.unlink()


def current_umask() -> int:
    """The process umask, read without setting it where /proc allows (setting it races other threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename inside directory ``path`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json(path: str | os.PathLike, obj) -> None:
    write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str, allow_nan=False) + "\n").encode())


def write_parquet(path: str | os.PathLike, table: pa.Table, *, row_group_size: int = 1024,
                  compression: str = "zstd") -> None:
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, row_group_size=row_group_size, compression=compression,
                       use_dictionary=dictionary_columns(table.schema))


def write_row_groups(path: str | os.PathLike, schema: pa.Schema, groups, *, compression: str = "zstd") -> None:
    """Write the tables ``groups`` yields to ``path`` (atomic), each as one row group: a shard written
    a row group at a time holds one group in memory, not the shard."""
    with atomic_path(path) as tmp, pq.ParquetWriter(tmp, schema, compression=compression,
                                                     use_dictionary=dictionary_columns(schema)) as w:
        for table in groups:
            w.write_table(table, row_group_size=max(table.num_rows, 1))


def dictionary_columns(schema: pa.Schema) -> list[str]:
    """The columns worth dictionary-encoding: flat strings, integers and booleans (labels, classes,
    kinds, sources). Floats, binary payloads and lists (embeddings, logits, images) are nearly all
    distinct, and trying a dictionary on them first costs time and saves no space: a scores unit with
    512-d embeddings is written about twice as fast without it (``benchmarks/parquet_write.py``)."""
    flat = (pa.types.is_string, pa.types.is_large_string, pa.types.is_integer, pa.types.is_boolean)
    return [f.name for f in schema if any(test(f.type) for test in flat)]


def read_parquet(path: str | os.PathLike, *, columns: list[str] | None = None) -> pa.Table:
    """Read a Parquet file through one open descriptor, so a concurrent ``os.replace`` of ``path``
    (another writer of the same cache entry) cannot pair one file's footer with another's pages,
    as ``pq.read_table(path)`` (which may open the path more than once) can."""
    with pa.OSFile(os.fspath(path)) as fh:
        return pq.read_table(fh, columns=columns)


def sha256_file(path: str | os.PathLike, *, chunk: int = 1 << 20, stop: threading.Event | None = None) -> str:
    """Hex sha256 of a file, read in ``chunk``-byte blocks; "" if ``stop`` is set before it ends
    (for a hash running beside other work that may fail)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            if stop is not None and stop.is_set():
                return ""
            h.update(block)
    return h.hexdigest()


def drop_partial_writes(*paths: str | os.PathLike) -> None:
    """Remove the temporary files a killed writer left beside these paths (``atomic_path`` names them
    ``.NAME.<random>.tmp``). Call it holding the paths' lock, so that no live writer owns them."""
    for p in map(Path, paths):
        for tmp in p.parent.glob(f".{p.name}.*.tmp"):
            tmp.unlink(missing_ok=True)
