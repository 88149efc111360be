"""A dataset's shard rows read a row group at a time, for commands that derive a dataset from one.

``kdata dedup`` decides on small per-row features, then writes the kept rows. Holding every shard
with its payloads for that costs about six times the payload bytes. ``ShardRows`` stands in for the
kept rows where ``write_shards`` takes a table: it reads each source row group when the output row
group that needs it is written, so memory holds one row group of payloads, never a dataset.
``ShardColumn`` is one column as a sequence (decoded in order), ``non_null_rows`` counts from the
footers' statistics.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from kdata.core.atomic import write_row_groups


def shard_schema(paths) -> pa.Schema:
    """The schema of the shards read as one table (``pa.concat_tables(..., promote_options="default")``)."""
    return pa.unify_schemas([pq.read_schema(p) for p in paths], promote_options="default")


def non_null_rows(paths, name: str) -> int:
    """Rows of the Parquet files ``paths`` whose flat column ``name`` is not null, from the footers'
    statistics; a row group without them is read, that column alone."""
    n = 0
    for p in paths:
        f = pq.ParquetFile(p)
        leaves = [f.schema.column(j).path for j in range(len(f.schema))]
        if name not in leaves:
            continue
        j = leaves.index(name)
        for g in range(f.num_row_groups):
            rg = f.metadata.row_group(g)
            stats = rg.column(j).statistics
            nulls = (stats.null_count if stats is not None and stats.has_null_count
                     else f.read_row_group(g, columns=[name]).column(0).null_count)
            n += rg.num_rows - nulls
    return n


class _Groups:
    """The row groups of ``paths`` (rows numbered across the files, in file order), read one at a
    time; the last one read is kept, so reading positions in order reads each group once."""

    def __init__(self, paths, columns: list[str] | None = None):
        self.paths, self.columns = [Path(p) for p in paths], columns
        self.where, starts = [], [0]
        for i, p in enumerate(self.paths):
            md = pq.read_metadata(p)
            for g in range(md.num_row_groups):
                self.where.append((i, g))
                starts.append(starts[-1] + md.row_group(g).num_rows)
        self.starts = np.asarray(starts, dtype=np.int64)
        self._file, self._last = (None, None), (None, None)

    def of(self, positions: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.starts, positions, side="right") - 1

    def read(self, k: int) -> pa.Table:
        if self._last[0] != k:
            i, g = self.where[k]
            if self._file[0] != i:
                self._file = (i, pq.ParquetFile(self.paths[i]))
            f = self._file[1]
            cols = None if self.columns is None else [c for c in self.columns if c in f.schema_arrow.names]
            self._last = (None, None)  # drop the previous group before reading the next
            self._last = (k, f.read_row_group(g, columns=cols))
        return self._last[1]


class ShardRows:
    """The rows at ``positions`` (row numbers across the shards ``paths``, in file order) in that
    order, with the columns ``replace`` names replaced (arrays aligned with ``positions``).

    It has what ``write_shards`` uses of a table (``num_rows``, ``schema``,
    ``replace_schema_metadata``, ``slice``, which is lazy) and ``write_parquet``, which writes the
    bytes ``kdata.core.atomic.write_parquet`` writes for the same rows, one row group at a time."""

    def __init__(self, paths, positions, *, replace: dict | None = None, schema: pa.Schema | None = None,
                 groups: _Groups | None = None):
        self.groups = groups or _Groups(paths)
        self.positions = np.asarray(positions, dtype=np.int64)
        self.replace = dict(replace or {})
        schema = schema if schema is not None else shard_schema(self.groups.paths)
        for name, arr in self.replace.items():
            schema = schema.set(schema.get_field_index(name), pa.field(name, arr.type))
        self.schema = schema

    @property
    def num_rows(self) -> int:
        return len(self.positions)

    def replace_schema_metadata(self, metadata) -> ShardRows:
        return ShardRows(None, self.positions, replace=self.replace, schema=self.schema.with_metadata(metadata),
                         groups=self.groups)

    def slice(self, offset: int = 0, length: int | None = None) -> ShardRows:
        pos = self.positions[offset:None if length is None else offset + length]
        return ShardRows(None, pos, replace={k: v.slice(offset, len(pos)) for k, v in self.replace.items()},
                         schema=self.schema, groups=self.groups)

    def read(self) -> pa.Table:
        """These rows as a table (read it on a slice: it holds every payload of the rows)."""
        if not self.num_rows:
            return self.schema.empty_table()
        k = self.groups.of(self.positions)
        by = np.argsort(k, kind="stable")  # group by group, each read once
        edges = np.flatnonzero(np.r_[True, np.diff(k[by]) != 0, True])
        pieces = []
        for a, b in zip(edges[:-1], edges[1:]):
            g = int(k[by[a]])
            pieces.append(_conform(self.groups.read(g).take(self.positions[by[a:b]] - self.groups.starts[g]),
                                   self.schema))
        table = pa.concat_tables(pieces)
        if (np.diff(by) != 1).any():
            table = table.take(np.argsort(by, kind="stable"))  # back to the order asked for
        for name, arr in self.replace.items():
            i = self.schema.get_field_index(name)
            table = table.set_column(i, self.schema.field(name), arr)
        return pa.Table.from_arrays(table.columns, schema=self.schema)

    def write_parquet(self, path: str | os.PathLike, *, row_group_size: int, compression: str = "zstd") -> None:
        """Write these rows to ``path`` (atomic), one row group of ``row_group_size`` rows at a time."""
        write_row_groups(path, self.schema, (self.slice(s, row_group_size).read()
                                             for s in range(0, max(self.num_rows, 1), row_group_size)),
                         compression=compression)


def _conform(t: pa.Table, schema: pa.Schema) -> pa.Table:
    """``t`` with ``schema``'s columns, in its order and types (a column ``t`` lacks: nulls)."""
    cols = [t.column(f.name).cast(f.type) if f.name in t.column_names else pa.nulls(t.num_rows, f.type)
            for f in schema]
    return pa.Table.from_arrays(cols, schema=schema.remove_metadata())


class ShardColumn:
    """Column ``name`` of the rows at ``positions`` (see ``ShardRows``) as a sequence of Python values,
    read a row group at a time: reading it in order reads each row group once."""

    def __init__(self, paths, name: str, positions):
        self.groups, self.name = _Groups(paths, columns=[name]), name
        self.positions = np.asarray(positions, dtype=np.int64)
        self._k = self.groups.of(self.positions)
        self._values = (None, [])

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i: int):
        k = int(self._k[i])
        if self._values[0] != k:
            t = self.groups.read(k)
            self._values = (k, t.column(self.name).to_pylist() if self.name in t.column_names
                            else [None] * t.num_rows)
        return self._values[1][int(self.positions[i] - self.groups.starts[k])]

    def __iter__(self):
        return (self[i] for i in range(len(self)))
