"""Copies of a real curated dataset damaged on disk, for the tests of what training does with bad input.

``copy_run`` copies a ``kdata select`` output; ``set_manifest`` rewrites a manifest field (its checksums
then disagree with nothing: the manifest records no checksum of itself); ``rewrite_shard`` replaces a
shard's table and records the new file's size, rows and sha256 in the manifest, so the integrity
check passes and only the reader meets the damage.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from kdata.dataset.integrity import file_entry


def copy_run(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest)
    return dest


def manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def set_manifest(out: Path, change) -> None:
    """``change(manifest dict)`` in place, written back."""
    m = manifest(out)
    change(m)
    (out / "manifest.json").write_text(json.dumps(m, indent=2))


def rewrite_shard(out: Path, change, *, index: int = 0) -> Path:
    """Shard ``index`` replaced by ``change(its table)``; the manifest's entry for it recomputed."""
    m = manifest(out)
    entry = m["files"][index]
    path = out / entry["path"]
    table = pq.read_table(path)
    pq.write_table(change(table), path)
    m["files"][index] = file_entry(path, rel=entry["path"])
    (out / "manifest.json").write_text(json.dumps(m, indent=2))
    return path


def null_first(table: pa.Table, name: str) -> pa.Table:
    """``table`` with column ``name``'s first entry set to null."""
    i = table.schema.get_field_index(name)
    col = table.column(name)
    values = [None] + col.to_pylist()[1:]
    return table.set_column(i, table.schema.field(i), pa.array(values, type=col.type))
