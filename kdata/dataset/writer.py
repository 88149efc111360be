"""Write a curated dataset: Parquet shards, the decisions table and ``manifest.json``.

Layout of an output directory::

    OUT/data/train-00000-of-00002.parquet   curated rows (kept), bounded row groups
    OUT/decisions.parquet                   one row per input sample: kept/rejected/quarantined
    OUT/excluded*.parquet                   (some runs) the rejected candidates / generated rows
    OUT/manifest.json                       files, rows, bytes, sha256, config, models, counts

The whole dataset is first written into a staging directory beside OUT and renamed into place
at the end, so a crash never leaves a half-written dataset that a later run would trust; the
manifest is the completion marker. A rerun with the same config finds the manifest, verifies the
dataset (``verify``: every file's checksum, every count re-derived) and returns.

One writer at a time: a run holds ``kdata.core.lock.exclusive(OUT)`` (the lock file
``.OUT.kdata-lock`` beside OUT) from its first look at OUT to the commit; a second run fails at
once naming the holder. Staging directories (``.OUT.kdata-staging-*``) are created and removed
only under that lock, so any found by a lock holder belong to a dead run and are removed.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import time
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from kdata.core.atomic import fsync_dir, write_parquet
from kdata.core.crashpoints import crash_after
from kdata.core.errors import KdataError, RuntimeFailure, printable
from kdata.core.jsonable import differences
from kdata.core.lock import Lock, acquire, current, pid_alive
from kdata.core.version import __version__
from kdata.dataset.integrity import DECISIONS_FILE, EXTRA_FILES, check_dataset, extra_file_entry, file_entry
from kdata.dataset.manifest import MANIFEST, read_manifest
from kdata.dataset.schema import (
    DECISIONS_OPTIONAL,
    DECISIONS_SCHEMA,
    SCHEMA_VERSION,
    conform,
    kdata_metadata,
    with_kdata_metadata,
)

DATA_DIR = "data"


def manifest_model(manifest: dict | None, role: str) -> str | None:
    """The spec of the ``role`` model (teacher, student, reference) a dataset was made with, as its
    manifest records it; None when it names none or only bring-your-own predictions (``byo:``)."""
    spec = (((manifest or {}).get("models") or {}).get(role) or {}).get("spec")
    return spec if isinstance(spec, str) and spec and not spec.startswith("byo:") else None


def check_output_dir(out: str | os.PathLike, *, config_hash: str, check: bool = True,
                     config: dict | None = None) -> str:
    """Decide what to do with OUT: ``"write"`` (absent/empty) or ``"done"`` (same run complete).

    A directory holding a different run, or files kdata did not write, is a usage error (naming the
    options that differ when this run's ``config`` is given and the manifest records its own). A
    complete same-config run is verified first (``check=False`` skips it): a damaged one is an
    error naming the first problem, never silently reported complete nor overwritten. Call it
    while holding ``exclusive(OUT)``; stale staging directories of OUT are then removed here.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise KdataError(f"{out}: --out exists and is not a directory")
    if current(out) is not None:
        remove_stale_staging(out)
    if not out.exists() or not any(out.iterdir()):
        if out.exists() and Path.cwd().resolve().is_relative_to(out.resolve()):
            raise KdataError(f"{out}: --out is the current directory (or holds it); the finished dataset replaces "
                             "OUT whole, which would pull the directory from under this shell — name a new one")
        return "write"
    manifest = read_manifest(out)
    if manifest is None:
        raise KdataError(f"{out}: --out is not empty and holds no kdata manifest; choose another directory")
    if manifest.get("config_hash") != config_hash:
        differs = _differences(manifest.get("config"), config) or \
            f"config {str(manifest.get('config_hash', '?'))[:12]}, this run {config_hash[:12]}"
        raise KdataError(f"{out}: --out already holds a different run ({differs}); choose another directory or "
                         "delete it")
    problems = check_dataset(out, manifest) if check else []
    if problems:
        raise KdataError(f"{out}: --out holds this run but it is damaged: {first_problem(problems)}; "
                         f"delete {out} and rerun to write it again (kdata inspect {out} lists every problem)")
    return "done"


def _differences(there, here, *, n: int = 3) -> str:
    """``budget '0.3' there, '0.5' here; …``: the options on which two recorded configs differ."""
    if not isinstance(there, dict) or not isinstance(here, dict):
        return ""
    found = differences(there, here)
    said = [f"{k} {_short(a)} there, {_short(b)} here" for k, a, b in found[:n]]
    return "; ".join(said) + (f"; and {len(found) - n} more" if len(found) > n else "")


def _short(value, *, width: int = 60) -> str:
    """A config value for a one-line message: a list or mapping by its size, anything else cut at ``width``."""
    if isinstance(value, (list, tuple, dict)) and len(repr(value)) > width:
        return f"<{len(value)} {'keys' if isinstance(value, dict) else 'items'}>"
    text = printable(repr(value))
    return text if len(text) <= width else text[:width - 1] + "…"


STAGING_INFIX = ".kdata-staging-"


def staging_dirs(out: str | os.PathLike) -> list[Path]:
    """The staging directories of OUT (``.OUT.kdata-staging-*`` beside it)."""
    out = Path(out).resolve()
    return sorted(out.parent.glob(f".{out.name}{STAGING_INFIX}*")) if out.parent.is_dir() else []


def remove_stale_staging(out: str | os.PathLike) -> list[Path]:
    """Remove the staging directories of OUT left by dead runs; the caller must hold OUT's lock.

    Under the lock every other staging directory of OUT is stale: its owner held the lock while
    writing it and has released it (exited or failed). One whose recorded owner is a live process
    on this host other than us (a writer that ignored the lock) is left alone.
    """
    if current(out) is None:
        raise RuntimeError(f"{out}: remove_stale_staging needs the lock of OUT held by this process")
    removed = []
    for d in staging_dirs(out):
        if d.is_symlink() or not d.is_dir() or _owner_alive(d):
            continue
        shutil.rmtree(d, ignore_errors=True)
        removed.append(d)
    return removed


def _owner_alive(staging: Path) -> bool:
    try:
        owner = json.loads((staging / OWNER_FILE).read_text())
    except (OSError, ValueError):
        return False
    return (owner.get("host") == socket.gethostname() and owner.get("pid") != os.getpid()
            and isinstance(owner.get("pid"), int) and pid_alive(owner["pid"]))


OWNER_FILE = ".kdata-owner"


class Staging:
    """A staging directory beside ``out``; ``commit()`` renames it into place atomically.

    Needs OUT's lock: pass the ``Lock`` a run holds (``lock=``), or Staging uses the one this
    process already holds on OUT, or takes it itself until ``commit``/``abort`` (failing at once
    when another run holds it). Stale staging directories of dead runs are removed on creation.
    """

    def __init__(self, out: str | os.PathLike, *, lock: Lock | None = None):
        self.out = Path(out).resolve()
        self.out.parent.mkdir(parents=True, exist_ok=True)
        if lock is not None and not lock.covers(self.out):
            raise RuntimeError(f"Staging({self.out}): the lock given is not a held lock of this directory")
        self._own = None
        if lock is None:
            lock = current(self.out)
        if lock is None:
            lock = self._own = acquire(self.out)
        self.lock = lock
        try:
            remove_stale_staging(self.out)
            self.path = self.out.parent / f".{self.out.name}{STAGING_INFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}"
            self.path.mkdir()
            (self.path / OWNER_FILE).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                                            "started_unix": time.time()}))
            crash_after(self.path)
        except BaseException:
            self._release()
            raise

    def commit(self) -> Path:
        """Rename the staged dataset to OUT (atomic). Raises, and leaves OUT untouched, when OUT
        meanwhile holds anything (only a writer ignoring the lock can do that): a result is never
        reported written when it was dropped."""
        try:
            if not self.lock.held:
                raise RuntimeError(f"{self.out}: the lock was released before commit")
            (self.path / OWNER_FILE).unlink(missing_ok=True)
            fsync_dir(self.path)
            try:
                os.rename(self.path, self.out)  # replaces an empty OUT; refuses a non-empty one
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
                    raise
                shutil.rmtree(self.path, ignore_errors=True)
                raise KdataError(f"{self.out}: something else wrote into it while this run was writing; this run's "
                                 f"result was discarded and {self.out} left as it is", exit_code=1) from None
            fsync_dir(self.out.parent)
            return self.out
        finally:
            self._release()

    def abort(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        self._release()

    def _release(self) -> None:
        if self._own is not None:
            self._own.release()
            self._own = None


def shard_name(i: int, n: int, *, split: str = "train") -> str:
    return f"{split}-{i:05d}-of-{n:05d}.parquet"


def check_shard_options(*, rows_per_shard, row_group_rows) -> None:
    """Refuse shard sizes below one row (one line, before any work when called up front)."""
    for flag, v in (("--rows-per-shard", rows_per_shard), ("--row-group-rows", row_group_rows)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise KdataError(f"{flag} {v!r}: must be a whole number ≥ 1")


SCRATCH_DIR = ".kdata-scratch"  # inside the staging directory: rows binned by shard while written


def write_shards(table: pa.Table, out_dir: str | os.PathLike, *, meta: dict, rows_per_shard: int = 10_000,
                 row_group_rows: int = 1_000, split: str = "train") -> list[dict]:
    """Write ``table`` as ``data/<split>-0000i-of-0000N.parquet`` shards (atomic each).

    ``table`` is a table, a ``ShardRows`` (kdata.dataset.shard_rows), or a lazy source of rows with
    ``num_rows`` and ``staged(scratch, rows_per_shard=…)``, a context manager giving the rows binned
    by shard (``kdata.dataset.shard_bins.StagedRows``; scratch files live in ``out_dir/.kdata-scratch``
    and are removed before this returns): each of the last two holds one shard's payloads at a time.
    Returns the manifest entries: path (relative), rows, bytes, sha256. Every row given is
    written exactly once (checked against the files' footers).
    """
    check_shard_options(rows_per_shard=rows_per_shard, row_group_rows=row_group_rows)
    out_dir = Path(out_dir)
    if not isinstance(table, pa.Table) and hasattr(table, "staged"):
        scratch = out_dir / SCRATCH_DIR
        try:
            with table.staged(scratch, rows_per_shard=rows_per_shard) as rows:
                return _write_shards(rows, out_dir, meta=meta, rows_per_shard=rows_per_shard,
                                     row_group_rows=row_group_rows, split=split)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return _write_shards(table, out_dir, meta=meta, rows_per_shard=rows_per_shard, row_group_rows=row_group_rows,
                         split=split)


def _write_shards(table, out_dir: Path, *, meta: dict, rows_per_shard: int, row_group_rows: int,
                  split: str) -> list[dict]:
    n_shards = max(1, -(-table.num_rows // rows_per_shard))
    schema = with_kdata_metadata(table.schema, meta)
    table = table.replace_schema_metadata(schema.metadata)
    files = []
    for i in range(n_shards):
        part = table.slice(i * rows_per_shard, rows_per_shard)
        rel = f"{DATA_DIR}/{shard_name(i, n_shards, split=split)}"
        if isinstance(part, pa.Table):
            write_parquet(out_dir / rel, part, row_group_size=row_group_rows)
        else:  # a ShardRows or a StagedRows shard: read and written one row group at a time
            part.write_parquet(out_dir / rel, row_group_size=row_group_rows)
        entry = file_entry(out_dir / rel, rel=rel)
        if entry["rows"] != part.num_rows:
            raise RuntimeFailure(f"{out_dir / rel}: wrote {entry['rows']} rows of {part.num_rows}")
        files.append(entry)
    written = sum(f["rows"] for f in files)
    if written != table.num_rows:
        raise RuntimeFailure(f"{out_dir}: wrote {written} rows in {n_shards} shard(s), given {table.num_rows}")
    return files


def build_manifest(*, files: list[dict], config: dict, config_hash: str, models: dict, counts: dict,
                   extra: dict | None = None, decisions: dict | None = None,
                   extra_files: list[dict] | None = None) -> dict:
    """The manifest: what was written (``files``; ``decisions``, the entry ``write_decisions``
    returns, checksums the decisions table; ``extra_files``, the entries ``extra_file_entries``
    returns for the files written beside the shards), how (config, models, seed) and the counts."""
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
        "decisions_file": (decisions or {}).get("path", DECISIONS_FILE),
        **({"decisions": decisions} if decisions is not None else {}),
        **({EXTRA_FILES: extra_files} if extra_files is not None else {}),
        **(extra or {}),
    }


def extra_file_entries(root: str | os.PathLike, names) -> list[dict]:
    """The manifest entries (path, bytes, sha256, rows for Parquet) of the files ``names`` written in
    ``root`` beside the shards, in name order; a file a writer did not produce is an error."""
    root = Path(root)
    entries = []
    for name in sorted(names):
        path = root / name
        if not path.is_file():
            raise RuntimeFailure(f"{path}: the writer of this extra file wrote nothing")
        entries.append(extra_file_entry(path, rel=name))
    return entries


def verify(out: str | os.PathLike) -> list[str]:
    """Every integrity problem of OUT, one line each (empty: intact): each shard, the decisions table
    and each recorded extra file (``excluded*.parquet``) present with its recorded size, sha256 and
    rows, and every count of the manifest re-derived from the decisions table and the shards
    (``kdata.dataset.integrity``)."""
    out = Path(out)
    try:
        manifest = read_manifest(out)
    except KdataError as exc:
        return [str(exc)]
    if manifest is None:
        return [f"{out}: no {MANIFEST}"]
    return check_dataset(out, manifest)


def first_problem(problems: list[str]) -> str:
    """``problems[0]`` and how many more there are, for a one-line message."""
    return problems[0] + (f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else "")


def require_intact(out: str | os.PathLike, *, refusal: str, hint: str = "") -> None:
    """``verify(out)``, or one KdataError line naming the first problem: ``OUT: integrity check failed,
    <refusal>: …; kdata inspect OUT lists every problem<hint>`` (train, dedup and augment refuse so)."""
    problems = verify(out)
    if problems:
        raise KdataError(f"{out}: integrity check failed, {refusal}: {first_problem(problems)}; "
                         f"kdata inspect {out} lists every problem{hint}")


def shard_paths(out: str | os.PathLike) -> list[Path]:
    """The curated shard files of OUT, from its manifest (falls back to a glob)."""
    out = Path(out)
    manifest = read_manifest(out)
    if manifest:
        return [out / f["path"] for f in manifest["files"]]
    return sorted((out / DATA_DIR).glob("*.parquet"))


def read_shards(out: str | os.PathLike, *, columns=None) -> pa.Table:
    """Every shard of OUT as one table; with ``columns``, only those of them the shards hold."""
    paths = shard_paths(out)
    if not paths:
        raise KdataError(f"{out}: no curated shards found")
    if columns is None:
        return pa.concat_tables([pq.read_table(p) for p in paths], promote_options="default")
    return pa.concat_tables([pq.read_table(p, columns=[c for c in pq.read_schema(p).names if c in columns])
                             for p in paths], promote_options="default")


def write_decisions(table: pa.Table, path: str | os.PathLike, *, rel: str | None = None) -> dict:
    """Write the decisions table (atomic) and return its manifest entry {path, rows, bytes, sha256}
    for ``build_manifest(decisions=...)``; ``rel`` is its path inside OUT (default: its name)."""
    path = Path(path)
    table = conform(table, DECISIONS_SCHEMA, keep_extra_prefix="score_", extra=DECISIONS_OPTIONAL)
    write_parquet(path, table, row_group_size=8192)
    entry = file_entry(path, rel=rel or path.name)
    if entry["rows"] != table.num_rows:
        raise RuntimeFailure(f"{path}: wrote {entry['rows']} decisions of {table.num_rows}")
    return entry


def shard_meta(table_or_path) -> dict:
    """A shard's ``kdata`` schema metadata (a malformed entry: one line naming the file)."""
    if isinstance(table_or_path, pa.Table):
        return kdata_metadata(table_or_path.schema)
    return kdata_metadata(pq.read_schema(table_or_path), where=str(table_or_path))
