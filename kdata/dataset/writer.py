"""Write a curated dataset: Parquet shards, the decisions table and ``manifest.json``.

Layout of an output directory::

    OUT/data/train-00000-of-00002.parquet   curated rows (kept), bounded row groups
    OUT/decisions.parquet                   one row per input sample: kept/rejected/quarantined
    OUT/manifest.json                       files, rows, bytes, sha256, config, models, counts

The whole dataset is first written into a staging directory beside OUT and renamed into place
at the end, so a crash never leaves a half-written dataset that a later run would trust; the
manifest is the completion marker. A rerun with the same config finds the manifest and returns.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from kdata.core.version import __version__
from kdata.core.atomic import sha256_file, write_parquet
from kdata.dataset.schema import DECISIONS_SCHEMA, SCHEMA_VERSION, SHARD_SCHEMA, conform, kdata_metadata, with_kdata_metadata
from kdata.core.errors import KdataError

MANIFEST = "manifest.json"
DATA_DIR = "data"


def read_manifest(out: str | os.PathLike) -> dict | None:
    path = Path(out) / MANIFEST
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise KdataError(f"{path}: unreadable manifest ({exc})") from None


def check_output_dir(out: str | os.PathLike, *, config_hash: str) -> str:
    """Decide what to do with OUT: ``"write"`` (absent/empty) or ``"done"`` (same run complete).

    A directory holding a different run, or files kdata did not write, is a usage error.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise KdataError(f"{out}: --out exists and is not a directory")
    if not out.exists() or not any(out.iterdir()):
        return "write"
    manifest = read_manifest(out)
    if manifest is None:
        raise KdataError(f"{out}: --out is not empty and holds no kdata manifest; choose another directory")
    if manifest.get("config_hash") != config_hash:
        raise KdataError(f"{out}: --out already holds a different run (config {manifest.get('config_hash', '?')[:12]}, "
                         f"this run {config_hash[:12]}); choose another directory or delete it")
    return "done"


class Staging:
    """A staging directory beside ``out``; ``commit()`` renames it into place atomically."""

    def __init__(self, out: str | os.PathLike):
        self.out = Path(out).resolve()
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.path = self.out.parent / f".{self.out.name}.kdata-staging-{os.getpid()}"
        if self.path.exists():
            shutil.rmtree(self.path)
        self.path.mkdir()
        # leftovers of crashed runs into the same OUT are removed
        for old in self.out.parent.glob(f".{self.out.name}.kdata-staging-*"):
            if old != self.path:
                shutil.rmtree(old, ignore_errors=True)

    def commit(self) -> None:
        if self.out.exists():
            if any(self.out.iterdir()):
                # a same-config complete run may have landed meanwhile; keep the first one
                shutil.rmtree(self.path, ignore_errors=True)
                return
            self.out.rmdir()
        os.replace(self.path, self.out)

    def abort(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def shard_name(i: int, n: int, *, split: str = "train") -> str:
    return f"{split}-{i:05d}-of-{n:05d}.parquet"


def write_shards(table: pa.Table, out_dir: str | os.PathLike, *, meta: dict, rows_per_shard: int = 10_000,
                 row_group_rows: int = 1_000, split: str = "train") -> list[dict]:
    """Write ``table`` as ``data/<split>-0000i-of-0000N.parquet`` shards (atomic each).

    Returns the manifest entries: path (relative), rows, bytes, sha256.
    """
    out_dir = Path(out_dir)
    n_shards = max(1, -(-table.num_rows // rows_per_shard))
    schema = with_kdata_metadata(table.schema, meta)
    table = table.replace_schema_metadata(schema.metadata)
    files = []
    for i in range(n_shards):
        part = table.slice(i * rows_per_shard, rows_per_shard)
        rel = f"{DATA_DIR}/{shard_name(i, n_shards, split=split)}"
        path = out_dir / rel
        write_parquet(path, part, row_group_size=row_group_rows)
        files.append({"path": rel, "rows": part.num_rows, "bytes": path.stat().st_size,
                      "sha256": sha256_file(path)})
    return files


def build_manifest(*, files: list[dict], config: dict, config_hash: str, models: dict, counts: dict,
                   extra: dict | None = None) -> dict:
    return {
        "kdata_version": __version__,
        "schema_version": SCHEMA_VERSION,
        "created_unix": int(time.time()),
        "config": config,
        "config_hash": config_hash,
        "seed": config.get("seed"),
        "models": models,
        "counts": counts,
        "files": files,
        "decisions_file": "decisions.parquet",
        **(extra or {}),
    }


def verify(out: str | os.PathLike) -> list[str]:
    """Check every file in the manifest: exists, size and sha256 match. Returns the problems."""
    out = Path(out)
    manifest = read_manifest(out)
    if manifest is None:
        return [f"{out}: no {MANIFEST}"]
    problems = []
    for f in manifest["files"]:
        path = out / f["path"]
        if not path.exists():
            problems.append(f"{path}: missing")
        elif path.stat().st_size != f["bytes"]:
            problems.append(f"{path}: size {path.stat().st_size} != manifest {f['bytes']}")
        elif sha256_file(path) != f["sha256"]:
            problems.append(f"{path}: sha256 mismatch (file changed since it was written)")
    return problems


def shard_paths(out: str | os.PathLike) -> list[Path]:
    """The curated shard files of OUT, from its manifest (falls back to a glob)."""
    out = Path(out)
    manifest = read_manifest(out)
    if manifest:
        return [out / f["path"] for f in manifest["files"]]
    return sorted((out / DATA_DIR).glob("*.parquet"))


def read_shards(out: str | os.PathLike) -> pa.Table:
    paths = shard_paths(out)
    if not paths:
        raise KdataError(f"{out}: no curated shards found")
    return pa.concat_tables([pq.read_table(p) for p in paths], promote_options="default")


def write_decisions(table: pa.Table, path: str | os.PathLike) -> None:
    write_parquet(path, conform(table, DECISIONS_SCHEMA, keep_extra_prefix="score_"), row_group_size=8192)


def shard_meta(table_or_path) -> dict:
    schema = table_or_path.schema if isinstance(table_or_path, pa.Table) else pq.read_schema(table_or_path)
    return kdata_metadata(schema)


def conform_shard(table: pa.Table) -> pa.Table:
    return conform(table, SHARD_SCHEMA)
