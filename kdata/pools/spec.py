"""Pool specs → a ``Pool``: independently readable units that each yield a pool-schema table.

A unit is a file or a chunk of files. Units are the grain of scoring, caching and fan-out (the
Prefect flow maps one task over them): each has a ``fingerprint`` (a content hash) so a rerun
scores only units it has not seen, and a range-addressable ``plan`` (``ParquetRows`` here) so a
scoring worker reads its own batch.

Specs: ``builtin:digits-web``, ``builtin:digits-test``, a Parquet file or a directory of Parquet
files. Other readers (image folders, WebDataset tars) register with ``register_reader``.

A Parquet file is read within bounds (``kdata.pools.parquet_rows``): a footer declaring more to
decode than a multiple of its size on disk is refused unread, and a payload value over
``--max-file-mb`` becomes a row with a null payload and the reason in ``read_error``, as a folder
file or tar member over the cap does.
"""

from __future__ import annotations

import inspect
import os
import time
from pathlib import Path

import pyarrow as pa

from kdata.core.digests import sha256_file_memo
from kdata.core.errors import KdataError
from kdata.core.paths import spec_text
from kdata.dataset.manifest import MANIFEST
from kdata.pools import readers as _readers  # noqa: F401  (image folders register themselves)
from kdata.pools import tar as _tar  # noqa: F401  (WebDataset tar shards)
from kdata.pools import text as _text  # noqa: F401  (JSONL, saved Hugging Face datasets)
from kdata.pools.base import (
    DEFAULT_LIMITS,
    Pool,
    PoolLimits,
    PoolUnit,
    readers,
    register_reader,
)
from kdata.pools.files import check_entry
from kdata.pools.parquet_rows import ParquetRows, parquet_labels

PARQUET_READER = "parquet-reader-v2"  # bump when a file is read differently (v2: bounded, cap per value)


def open_pool(spec: str, *, limits: PoolLimits = DEFAULT_LIMITS, what: str = "pool") -> Pool:
    """Open a pool spec; a missing path or unknown format is one clear KdataError naming it ``what``
    (an evaluation set is read as a pool too).

    ``limits`` (symlinks, size cap per file) go to every reader that takes them. The pool carries
    ``opened_ns``, when it was opened: a file changed after that is not the one this run read."""
    spec = spec_text(spec, what=what)
    opened = time.time_ns()
    for claims, fn in readers():
        if claims(spec):
            pool = fn(spec, limits=limits) if "limits" in inspect.signature(fn).parameters else fn(spec)
            pool.opened_ns = opened
            return pool
    if not spec.startswith("builtin:") and not os.path.exists(spec):
        raise KdataError(f"{spec}: {what} not found (no such file or directory)")
    mixed = _mixed_folder(Path(spec))
    if mixed:
        raise KdataError(mixed)
    raise KdataError(f"{spec}: unrecognised {what} (expected builtin:digits-web, a Parquet file/directory, "
                     "an image folder, WebDataset tar shards (.tar, .tar.gz, .tgz, .tar.bz2, .tar.xz), JSONL "
                     "text or a saved Hugging Face dataset)")


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

def _parquet_unit(path: Path, root: Path | None, *, limits: PoolLimits = DEFAULT_LIMITS) -> PoolUnit:
    name = str(path.relative_to(root)) if root else path.name

    def read() -> pa.Table:
        rows = ParquetRows(path, name, limits=limits)
        return rows.read_rows(0, rows.num_rows)

    return PoolUnit(name=name, read=read, path=str(path),
                    fingerprint=lambda: f"sha256:{sha256_file_memo(path)}{limits.tag()}:{PARQUET_READER}",
                    labels=lambda: parquet_labels(path), rows=lambda: ParquetRows(path, name, limits=limits))


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
        units = [_parquet_unit(p, None, limits=limits)]
    else:
        files = dataset_shards(p) or sorted(f for f in p.rglob("*.parquet") if not f.name.startswith("."))
        root_real = os.path.realpath(p)
        for f in files:
            reason = check_entry(f, root_real=root_real, limits=limits)
            if reason is not None:
                raise KdataError(f"{f}: {reason}")
        units = [_parquet_unit(f, p, limits=limits) for f in files]
    return Pool(spec=spec, units=units, description=f"Parquet pool at {spec} ({len(units)} file(s))")


def dataset_shards(p: Path) -> list[Path] | None:
    """The shards a kdata dataset directory's ``manifest.json`` lists (so its ``decisions.parquet`` and
    ``excluded.parquet`` are not read as pool files); None for any other directory."""
    import json

    try:
        files = json.loads((p / MANIFEST).read_text()).get("files")
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

@register_reader(lambda s: s.startswith("builtin:"))
def open_builtin(spec: str) -> Pool:
    """``builtin:digits-web`` / ``builtin:digits-test`` (materialised once in the cache by
    ``kdata.pools.builtin.materialise``), or a built-in pool another module registers."""
    from kdata.pools import builtin  # its imports register further built-in readers (builtin:text-*)

    name = spec.split(":", 1)[1]
    if name not in builtin.POOLS:
        other = _other_builtin(spec)
        if other is not None:
            return other
        raise KdataError(f"unknown built-in pool '{spec}' (builtin:digits-web, builtin:digits-test)")
    pool = open_parquet(str(builtin.materialise(name)))
    pool.spec = spec
    pool.class_names = list(builtin.CLASS_NAMES)
    pool.description = builtin.DESCRIPTIONS[name]
    return pool


def _other_builtin(spec: str) -> Pool | None:
    """A built-in pool that another module registers when ``kdata.pools.builtin`` is imported
    (``builtin:text-*``), or None."""
    for claims, fn in readers():
        if fn is not open_builtin and claims(spec):
            return fn(spec)
    return None
