"""Pool specs → a ``Pool``: independently readable units that each yield a pool-schema table.

A unit is a file or a chunk of files. Units are the grain of scoring, caching and fan-out (the
Prefect flow maps one task over them): each has a ``fingerprint`` (a content hash) so a rerun
scores only units it has not seen, and a range-addressable ``plan`` (``ParquetRows`` here) so a
scoring worker reads its own batch.

Specs: ``builtin:digits-web``, ``builtin:digits-test``, a Parquet file or a directory of Parquet
files. Other readers (image folders, WebDataset tars) register with ``register_reader``.
"""

from __future__ import annotations

import hashlib
import inspect
import itertools
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from kdata.core.atomic import sha256_file, write_parquet
from kdata.core.errors import KdataError
from kdata.core.paths import cache_dir
from kdata.dataset.schema import POOL_SCHEMA, check_pool_ids, conform, validate_pool
from kdata.pools import readers as _readers  # noqa: F401  (image folders register themselves)
from kdata.pools import tar as _tar  # noqa: F401  (WebDataset tar shards)
from kdata.pools import text as _text  # noqa: F401  (JSONL, saved Hugging Face datasets)
from kdata.pools.base import (
    DEFAULT_LIMITS,
    Pool,
    PoolLimits,
    PoolUnit,
    UnitRows,
    readers,
    register_reader,
)
from kdata.pools.files import check_entry


def open_pool(spec: str, *, limits: PoolLimits = DEFAULT_LIMITS) -> Pool:
    """Open a pool spec; a missing path or unknown format is one clear KdataError.

    ``limits`` (symlinks, size cap per file) go to every reader that takes them."""
    for claims, fn in readers():
        if claims(spec):
            if "limits" in inspect.signature(fn).parameters:
                return fn(spec, limits=limits)
            return fn(spec)
    if not spec.startswith("builtin:") and not os.path.exists(spec):
        raise KdataError(f"{spec}: pool not found (no such file or directory)")
    mixed = _mixed_folder(Path(spec))
    if mixed:
        raise KdataError(mixed)
    raise KdataError(f"{spec}: unrecognised pool (expected builtin:digits-web, a Parquet file/directory, "
                     "an image folder, WebDataset .tar shards, JSONL text or a saved Hugging Face dataset)")


def _mixed_folder(p: Path) -> str | None:
    """The one-line refusal for a directory that holds image files and Parquet files alike."""
    if not (p.is_dir() and _readers.has_images(p)):
        return None
    parquet = min(p.rglob("*.parquet"), default=None)
    if parquet is None:
        return None
    return (f"{p}: holds image files and Parquet files ({parquet}), so it is neither an image folder nor a "
            "Parquet pool; move the Parquet files out (or the images), or point --pool at one kind")


# ------------------------------------------------------------------------------------------------
# Parquet

def _finish_parquet(table: pa.Table, *, name: str, path: Path, offset: int = 0) -> pa.Table:
    """Rows read from a Parquet pool file → pool schema: ``<file>:<row>`` ids where the file has none."""
    if "sample_id" not in table.column_names:  # readable, stable ids: <file>:<row>
        ids = pa.array([f"{name}:{i}" for i in range(offset, offset + table.num_rows)], pa.string())
        table = table.append_column("sample_id", ids)
    validate_pool(table.schema, where=str(path))
    if "kind" not in table.column_names:
        table = table.append_column("kind", pa.array(["original"] * table.num_rows, pa.string()))
    return conform(table, POOL_SCHEMA, keep_extra_prefix=None)


class ParquetRows(UnitRows):
    """A Parquet pool file by row range: a worker reads the row groups its batch spans.

    Opening it reads the footer and the ``sample_id`` column only, and checks what ``read`` checks
    (the schema, null ids), so a bad file is one line before any decoding starts. A worker keeps
    the last row groups it read: consecutive batches inside one row group read it once."""

    def __init__(self, path: Path, name: str):
        self.path, self.name = Path(path), name
        try:
            meta = pq.read_metadata(path)
            schema = meta.schema.to_arrow_schema()
            ids = pq.read_table(path, columns=["sample_id"]) if "sample_id" in schema.names else None
        except Exception as exc:  # noqa: BLE001  (not Parquet, truncated…: one line naming the file)
            raise KdataError(f"{path}: cannot read Parquet ({str(exc).splitlines()[0]})") from None
        if "sample_id" not in schema.names:
            schema = schema.append(pa.field("sample_id", pa.string()))
        validate_pool(schema, where=str(path))
        if ids is not None:
            check_pool_ids(ids, where=str(path))
        sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
        self.bounds = [0, *itertools.accumulate(sizes)]  # row group g holds rows [bounds[g], bounds[g + 1])
        self.num_rows = meta.num_rows
        self.has_ids = ids is not None
        self._ids = ids.column("sample_id").combine_chunks().cast(pa.string()) if ids is not None else None
        self._last: tuple[tuple[int, ...], pa.Table] | None = None

    def __getstate__(self):
        # a task ships the plan, never a cached row group nor the id column
        return {**self.__dict__, "_last": None, "_ids": None}

    def sample_ids(self) -> pa.Array:
        """The ids from the ``sample_id`` column read on opening (``<file>:<row>`` where there is none):
        no payload is read."""
        if self.has_ids:
            if self._ids is None:  # a shipped plan: read the column again
                self._ids = pq.read_table(self.path, columns=["sample_id"]).column("sample_id").combine_chunks()
            return self._ids.cast(pa.string())
        return pa.array([f"{self.name}:{i}" for i in range(self.num_rows)], pa.string())

    def read_rows(self, start: int, stop: int) -> pa.Table:
        groups = tuple(g for g in range(len(self.bounds) - 1) if self.bounds[g] < stop and self.bounds[g + 1] > start)
        if self._last is None or self._last[0] != groups:
            try:
                self._last = (groups, pq.ParquetFile(self.path).read_row_groups(list(groups)))
            except Exception as exc:  # noqa: BLE001
                raise KdataError(f"{self.path}: cannot read Parquet ({str(exc).splitlines()[0]})") from None
        first = self.bounds[groups[0]] if groups else start
        table = self._last[1].slice(start - first, stop - start)
        return _finish_parquet(table, name=self.name, path=self.path, offset=start)


def _parquet_unit(path: Path, root: Path | None) -> PoolUnit:
    name = str(path.relative_to(root)) if root else path.name

    def read() -> pa.Table:
        try:
            table = pq.read_table(path)
        except Exception as exc:  # noqa: BLE001  (not Parquet, truncated…: one line naming the file)
            raise KdataError(f"{path}: cannot read Parquet ({str(exc).splitlines()[0]})") from None
        if "sample_id" in table.column_names:
            validate_pool(table.schema, where=str(path))
            check_pool_ids(table, where=str(path))
        return _finish_parquet(table, name=name, path=path)

    return PoolUnit(name=name, read=read, fingerprint=lambda: "sha256:" + sha256_file(path), path=str(path),
                    labels=lambda: parquet_labels(path), rows=lambda: ParquetRows(path, name))


def parquet_labels(path: Path) -> set[str]:
    """The distinct non-null values of a Parquet file's ``label`` column, reading only that column
    (none when it has no such column or cannot be read: reading the unit reports the problem)."""
    try:
        if "label" not in pq.read_schema(path).names:
            return set()
        col = pq.read_table(path, columns=["label"]).column("label")
        if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)
                or pa.types.is_string_view(col.type) or pa.types.is_dictionary(col.type)):
            return set()  # a wrongly typed label column: validate_pool names it when the unit is read
        values = pc.unique(col.cast(pa.string())).drop_null().to_pylist()
    except Exception:  # noqa: BLE001
        return set()
    return set(values)


def _is_parquet(spec: str) -> bool:
    """A ``.parquet`` file, a kdata dataset directory, or a directory of Parquet files and no images
    (a folder holding both is ambiguous: ``open_pool`` refuses it, naming one file of each kind)."""
    p = Path(spec)
    if p.is_file():
        return p.suffix == ".parquet"
    return p.is_dir() and any(p.rglob("*.parquet")) and (dataset_shards(p) is not None or not _readers.has_images(p))


@register_reader(_is_parquet)
def open_parquet(spec: str, *, limits: PoolLimits = DEFAULT_LIMITS) -> Pool:
    """A Parquet file, or every ``*.parquet`` under a directory (sorted; hidden files skipped).

    Under a directory, each file must be a regular file and a symlink must stay inside the
    directory (anywhere with ``limits.follow_symlinks``): anything else is one line, up front."""
    p = Path(spec)
    if p.is_file():
        units = [_parquet_unit(p, None)]
    else:
        files = dataset_shards(p) or sorted(f for f in p.rglob("*.parquet") if not f.name.startswith("."))
        root_real = os.path.realpath(p)
        for f in files:
            reason = check_entry(f, root_real=root_real, limits=limits)
            if reason is not None:
                raise KdataError(f"{f}: {reason}")
        units = [_parquet_unit(f, p) for f in files]
    return Pool(spec=spec, units=units, description=f"Parquet pool at {spec} ({len(units)} file(s))")


def dataset_shards(p: Path) -> list[Path] | None:
    """The shards a kdata dataset directory's ``manifest.json`` lists (so its ``decisions.parquet`` and
    ``excluded.parquet`` are not read as pool files); None for any other directory."""
    import json

    try:
        files = json.loads((p / "manifest.json").read_text()).get("files")
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(files, list) or not files:
        return None
    paths = [p / f["path"] for f in files if isinstance(f, dict) and isinstance(f.get("path"), str)]
    root = os.path.realpath(p)
    inside = [f for f in paths if os.path.realpath(f).startswith(root + os.sep) and f.suffix == ".parquet"]
    return inside if len(inside) == len(files) else None


# ------------------------------------------------------------------------------------------------
# Built-in pools: materialised once as Parquet shards in the cache, then read like any Parquet pool.

BUILTIN_POOLS = ("digits-web", "digits-test")


def _materialise_builtin(name: str, *, seed: int = 0, n_units: int = 4) -> Path:
    from kdata.pools import builtin

    root = cache_dir("pools", f"{builtin.POOL_VERSION}-{name}-seed{seed}")
    done = root / "_SUCCESS"
    if done.exists():
        return root
    table = builtin.digits_web(seed=seed) if name == "digits-web" else builtin.digits_test()
    n_units = n_units if name == "digits-web" else 1
    step = -(-table.num_rows // n_units)
    for i in range(n_units):
        write_parquet(root / f"part-{i:05d}.parquet", table.slice(i * step, step), row_group_size=512)
    done.write_text("ok\n")
    return root


@register_reader(lambda s: s.startswith("builtin:"))
def open_builtin(spec: str) -> Pool:
    name = spec.split(":", 1)[1]
    if name not in BUILTIN_POOLS:
        other = _other_builtin(spec)
        if other is not None:
            return other
        raise KdataError(f"unknown built-in pool '{spec}' (builtin:digits-web, builtin:digits-test)")
    from kdata.pools import builtin

    root = _materialise_builtin(name)
    pool = open_parquet(str(root))
    pool.spec = spec
    pool.class_names = list(builtin.CLASS_NAMES)
    pool.description = ("scikit-learn digits shaped like web data: clean, label noise, shift, junk, duplicates"
                        if name == "digits-web" else "400 clean held-out scikit-learn digits")
    return pool


def _other_builtin(spec: str) -> Pool | None:
    """A built-in pool that another module registers when ``kdata.pools.builtin`` is imported
    (``builtin:text-*``), or None."""
    from kdata.pools import builtin  # noqa: F401  (its imports register further built-in readers)

    for claims, fn in readers():
        if fn is not open_builtin and claims(spec):
            return fn(spec)
    return None


def fingerprint_of(strings: list[str]) -> str:
    h = hashlib.sha256()
    for s in strings:
        h.update(s.encode())
        h.update(b"\0")
    return "sha256:" + h.hexdigest()
