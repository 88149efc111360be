"""The pool's units: independently readable pieces that each yield a pool-schema table."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from kdata.core.errors import KdataError
from kdata.core.ids import member_mask
from kdata.dataset.schema import POOL_SCHEMA

DEFAULT_MAX_FILE_MB = 64.0


@dataclass(frozen=True)
class PoolLimits:
    """What a reader agrees to read from a pool on disk (``--follow-symlinks``, ``--max-file-mb``).

    Pools are collected from the web, so a name may be a FIFO, a symlink to ``/dev/zero`` or a
    file far larger than any image. Readers read regular files only, follow a symlink only when
    its target stays inside the pool (anywhere with ``follow_symlinks``) and read at most
    ``max_file_mb`` MiB per file; anything else quarantines the sample with the reason.
    """

    follow_symlinks: bool = False
    max_file_mb: float = DEFAULT_MAX_FILE_MB

    def __post_init__(self):
        if not isinstance(self.follow_symlinks, bool):
            raise KdataError(f"--follow-symlinks {self.follow_symlinks!r}: expected true or false")
        mb = self.max_file_mb
        if isinstance(mb, bool) or not isinstance(mb, (int, float)) or not math.isfinite(mb) or mb <= 0:
            raise KdataError(f"--max-file-mb {mb!r}: must be a finite number of MiB > 0")

    @property
    def max_file_bytes(self) -> int:
        return int(self.max_file_mb * 2**20)

    def tag(self) -> str:
        """A fingerprint suffix: empty at the defaults (fingerprints of ordinary pools do not move)."""
        return "" if self == DEFAULT_LIMITS else f"+limits(follow={int(self.follow_symlinks)},mb={self.max_file_mb:g})"


DEFAULT_LIMITS = PoolLimits()


class UnitRows:
    """A unit's rows addressable by range, so a decode worker reads the bytes of its own batch.

    Instances are small and picklable (paths, offsets, row counts; no image bytes): a scoring run
    ships one to a worker with each batch task, and the worker calls ``read_rows(start, stop)``
    itself (a file per row, a tar member per row, a Parquet row range). ``part`` narrows what a
    task carries; readers that address rows on disk carry the whole (small) plan.
    """

    num_rows: int = 0

    def read_rows(self, start: int, stop: int) -> pa.Table:
        """Rows ``[start, stop)`` as a pool-schema table (plus ``read_error``), like ``PoolUnit.read``."""
        raise NotImplementedError

    def part(self, start: int, stop: int) -> UnitRows:
        """What a task for rows ``[start, stop)`` ships to a worker (it still reads with the unit's row numbers)."""
        return self

    def sample_ids(self) -> pa.Array:
        """The unit's sample ids in row order (readers that know them without reading payloads say so)."""
        return self.read_rows(0, self.num_rows).column("sample_id").combine_chunks()

    def take(self, rows) -> pa.Table:
        """The rows at positions ``rows`` (ascending, no repeats), read without the others' payloads
        where the reader can address them: a Parquet file reads only the row groups holding them, a
        folder only their files. The default reads each run of consecutive positions."""
        rows = np.asarray(rows, np.int64)
        if not rows.size:
            return self.read_rows(0, 0)
        cuts = np.flatnonzero(np.diff(rows) != 1) + 1
        starts, stops = rows[np.r_[0, cuts]], rows[np.r_[cuts - 1, rows.size - 1]] + 1
        return pa.concat_tables([self.read_rows(int(a), int(b)) for a, b in zip(starts, stops)])

    def read_column(self, name: str) -> pa.ChunkedArray | None:
        """One pool-schema column of every row (None where the unit lacks it); Parquet reads it alone."""
        t = self.read_rows(0, self.num_rows)
        return t.column(name) if name in t.column_names else None


class TableRows(UnitRows):
    """The default plan of a reader that cannot address rows: the unit read once, in memory.

    ``part`` ships only the task's rows (copied: Arrow pickles a slice with its whole buffer), so
    bytes cross to a worker once, in the task that decodes them."""

    def __init__(self, table: pa.Table, *, offset: int = 0):
        self.table, self.offset, self.num_rows = table, offset, offset + table.num_rows

    def read_rows(self, start: int, stop: int) -> pa.Table:
        return self.table.slice(start - self.offset, stop - start)

    def part(self, start: int, stop: int) -> UnitRows:
        rows = self.table.take(pa.array(range(start - self.offset, stop - self.offset), pa.int64()))
        return TableRows(rows, offset=start)

    def take(self, rows) -> pa.Table:
        return self.table.take(pa.array(np.asarray(rows, np.int64) - self.offset, pa.int64()))


@dataclass
class PoolUnit:
    """A slice of a pool (a file, a share of a folder, a Parquet row range): read on demand, fingerprinted
    by its content, and the grain of scoring, caching and Prefect tasks."""

    name: str  # readable, unique within the pool
    read: Callable[[], pa.Table]  # -> pool-schema table (plus ``read_error`` where a reader could not read)
    fingerprint: Callable[[], str]  # content hash of the unit
    path: str | None = None
    labels: Callable[[], set[str]] | None = None  # the distinct web labels, read cheaply (None: unknown)
    rows: Callable[[], UnitRows] | None = None  # addressable rows for decode workers (None: read() in memory)

    def plan(self) -> UnitRows:
        """The unit's rows as a picklable, range-addressable reader (``TableRows(read())`` by default).

        Raises ``KdataError`` for what can be checked before any row is decoded (an unreadable
        Parquet footer, a duplicate tar key)."""
        return self.rows() if self.rows is not None else TableRows(self.read())

    def read_rows(self, start: int, stop: int) -> pa.Table:
        """Rows ``[start, stop)`` of the unit (pool schema plus ``read_error``)."""
        return self.plan().read_rows(start, stop)

    def sample_ids(self) -> pa.Array:
        """The unit's sample ids in row order; image folders, tar shards and Parquet files without reading a payload."""
        return self.rows().sample_ids() if self.rows is not None else self.read().column("sample_id").combine_chunks()

    def take(self, rows) -> pa.Table:
        """Rows at positions ``rows`` (ascending), reading only what holds them where the reader can
        (``UnitRows.take``): a run that needs a few rows of a large file does not decode all of it."""
        return self.plan().take(rows)

    def read_column(self, name: str) -> pa.ChunkedArray | None:
        """Column ``name`` of every row, or None; a Parquet file reads that column alone."""
        return self.plan().read_column(name)

    def take_ids(self, wanted) -> pa.Table:
        """The rows whose ``sample_id`` is in ``wanted`` (a set or dict built once per run), found from
        the unit's ids (no payload read) and read with ``take``, both from one ``plan`` (a unit without
        addressable rows is read once, a Parquet footer and id column once)."""
        plan = self.plan()
        ids = plan.sample_ids()
        return plan.take(np.flatnonzero(member_mask(ids, wanted).to_numpy(zero_copy_only=False)))


@dataclass
class Pool:
    """An opened pool: its units (the grain of scoring, caching and Prefect tasks), the class names a
    folder layout gives, and a description the manifest records."""

    spec: str
    units: list[PoolUnit]
    class_names: list[str] | None = None  # known from the pool itself (folders), else None
    description: str = ""
    extra: dict = field(default_factory=dict)

    def read_all(self) -> pa.Table:
        tables = [u.read() for u in self.units]
        if not tables:
            return POOL_SCHEMA.empty_table()
        return pa.concat_tables(tables, promote_options="default")

    def labels(self) -> list[str] | None:
        """The distinct web labels of the pool (sorted, nulls ignored); None when a reader cannot tell.

        Folders know them when opened; Parquet pools read only their ``label`` column, WebDataset
        shards only their ``.cls`` members."""
        if self.class_names is not None:
            return list(self.class_names)
        if not self.units or any(u.labels is None for u in self.units):
            return None
        return sorted(set().union(*(u.labels() for u in self.units)))

    def check_labels(self, class_names: list[str]) -> None:
        """Refuse a pool whose web labels the teacher does not know (each would get ``label_idx`` −1).

        One line naming the first file (or the pool) with an unknown label and up to five labels."""
        known = set(class_names)
        if self.class_names is not None or not self.units or any(u.labels is None for u in self.units):
            missing, where = sorted(set(self.labels() or ()) - known), self.spec
        else:
            missing, where = [], self.spec
            for u in self.units:
                missing = sorted(u.labels() - known)
                if missing:
                    where = u.path or u.name
                    break
        if missing:
            more = f" ({len(missing)} in all)" if len(missing) > 5 else ""
            raise KdataError(f"{where}: pool labels {missing[:5]}{more} are not among the teacher's class names")


_READERS: list[tuple[Callable[[str], bool], Callable[..., Pool]]] = []


def register_reader(claims: Callable[[str], bool]):
    """Decorator: ``fn(spec) -> Pool`` opens pool specs for which ``claims(spec)`` is true.

    A reader that takes a keyword ``limits`` receives the run's ``PoolLimits``."""

    def deco(fn):
        _READERS.append((claims, fn))
        return fn

    return deco


def readers() -> list[tuple[Callable[[str], bool], Callable[..., Pool]]]:
    """The registered ``(claims, open)`` pairs, in registration order."""
    return list(_READERS)
