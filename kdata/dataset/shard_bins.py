"""Rows that arrive in one order (a pool read once, file by file) written in another (rank order),
holding one output shard at a time.

``kdata select`` keeps rows anywhere in the pool and writes them best first. Gathering every kept
payload into one table before writing costs the kept payload bytes several times over (1.9 GB of
RSS for 0.4 GB of kept images). ``ShardBins`` takes the rows as the pool is read, each with its
rank (its row number in the output), and bins them by output shard: in memory when the output is
one shard, else in Arrow IPC files under a scratch folder (one pass over the pool, whatever the
number of shards). ``StagedRows`` then stands in for the rows where ``write_shards`` takes a table:
each shard is read back alone and written a row group at a time, with the bytes
``kdata.core.atomic.write_parquet`` writes for the same rows as one table.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from kdata.core.atomic import atomic_path, dictionary_columns

RANK = "__kdata_rank"  # the row's position in the output, carried beside it while binned
OPEN_FILES = 64  # shard files held open at once while binning (more shards: a file is reopened as a new part)


class ShardBins:
    """Rows of an output of ``num_rows`` rows binned by shard (``rows_per_shard`` rows each) as they
    arrive; ``rows(i)`` gives shard ``i``'s rows back (any order, with ``RANK``)."""

    def __init__(self, scratch: str | os.PathLike, *, num_rows: int, rows_per_shard: int):
        self.scratch, self.num_rows, self.rows_per_shard = Path(scratch), num_rows, rows_per_shard
        self.n_shards = max(1, -(-num_rows // rows_per_shard))
        self.schema: pa.Schema | None = None  # of the rows added (with RANK)
        self._held: list[pa.Table] = []  # one shard: its rows, in memory
        self._open: collections.OrderedDict[int, tuple] = collections.OrderedDict()
        self._files: dict[int, list[Path]] = collections.defaultdict(list)

    def add(self, table: pa.Table, ranks: np.ndarray) -> None:
        """Bin ``table``'s rows, whose output positions are ``ranks``."""
        if not table.num_rows:
            return
        table = table.append_column(RANK, pa.array(np.asarray(ranks, np.int64)))
        if self.schema is None:
            self.schema = table.schema
        if self.n_shards == 1:
            self._held.append(table)
            return
        shard = np.asarray(ranks, np.int64) // self.rows_per_shard
        order = np.argsort(shard, kind="stable")
        if (np.diff(order) != 1).any():
            table, shard = table.take(pa.array(order)), shard[order]
        edges = np.flatnonzero(np.r_[True, np.diff(shard) != 0, True])
        for a, b in zip(edges[:-1], edges[1:]):
            self._writer(int(shard[a])).write_table(table.slice(int(a), int(b - a)))

    def _writer(self, shard: int) -> pa.ipc.RecordBatchFileWriter:
        if shard in self._open:
            self._open.move_to_end(shard)
            return self._open[shard][0]
        if len(self._open) >= OPEN_FILES:
            self._close(next(iter(self._open)))
        self.scratch.mkdir(parents=True, exist_ok=True)
        path = self.scratch / f"shard-{shard:05d}-{len(self._files[shard]):05d}.arrow"
        sink = pa.OSFile(str(path), "wb")
        writer = pa.ipc.new_file(sink, self.schema)
        self._files[shard].append(path)
        self._open[shard] = (writer, sink)
        return writer

    def _close(self, shard: int) -> None:
        writer, sink = self._open.pop(shard)
        writer.close()
        sink.close()

    def close(self) -> None:
        """Close the files still open (``rows`` closes a shard's own)."""
        for shard in list(self._open):
            self._close(shard)

    def rows(self, shard: int) -> pa.Table:
        """Shard ``shard``'s rows as binned (arrival order, with ``RANK``); files are memory-mapped."""
        if self.n_shards == 1:
            return pa.concat_tables(self._held) if self._held else self.schema.empty_table()
        if shard in self._open:
            self._close(shard)
        tables = [pa.ipc.open_file(pa.memory_map(str(p))).read_all() for p in self._files.get(shard, [])]
        return pa.concat_tables(tables) if tables else self.schema.empty_table()

    def drop(self, shard: int) -> None:
        """Forget shard ``shard``'s rows (written): memory released, its files removed."""
        if self.n_shards == 1:
            self._held = []
        for p in self._files.pop(shard, []):
            p.unlink(missing_ok=True)


def gather(table: pa.Table, where: np.ndarray) -> pa.Table:
    """Rows ``where`` of ``table`` in that order (single-chunk columns), copying only those rows: Arrow's
    ``take`` on a many-chunk table concatenates every chunk first."""
    batches = table.to_batches()
    if not len(where) or not batches:
        return table.schema.empty_table()
    starts = np.cumsum([0] + [b.num_rows for b in batches])
    k = np.searchsorted(starts, where, side="right") - 1
    by = np.argsort(k, kind="stable")  # batch by batch
    edges = np.flatnonzero(np.r_[True, np.diff(k[by]) != 0, True])
    pieces = [batches[int(k[by[a]])].take(pa.array(where[by[a:b]] - starts[k[by[a]]]))
              for a, b in zip(edges[:-1], edges[1:])]
    out = pa.Table.from_batches(pieces, schema=table.schema)
    if (np.diff(by) != 1).any():
        out = out.take(pa.array(np.argsort(by, kind="stable")))  # back to the order asked for
    return out.combine_chunks()


class StagedRows:
    """Binned rows as ``write_shards`` uses a table (``num_rows``, ``schema``,
    ``replace_schema_metadata``, ``slice`` of whole shards, each with ``write_parquet``).

    ``finish(start, rows)`` turns the binned rows of output positions ``start…`` (in order, without
    ``RANK``) into the rows written, of ``schema``."""

    def __init__(self, bins: ShardBins, *, schema: pa.Schema, finish: Callable[[int, pa.Table], pa.Table]):
        self.bins, self.schema, self.finish = bins, schema, finish
        self.num_rows = bins.num_rows

    def replace_schema_metadata(self, metadata) -> StagedRows:
        return StagedRows(self.bins, schema=self.schema.with_metadata(metadata), finish=self.finish)

    def slice(self, offset: int = 0, length: int | None = None) -> StagedShard:
        rps = self.bins.rows_per_shard
        if offset % rps or (length is not None and length != rps):
            raise ValueError(f"StagedRows slices whole shards of {rps} rows (asked {offset}, {length})")
        return StagedShard(self, offset // rps)


class StagedShard:
    """One output shard of ``StagedRows``, written from its binned rows alone."""

    def __init__(self, rows: StagedRows, shard: int):
        self.rows, self.shard = rows, shard
        rps = rows.bins.rows_per_shard
        self.start = shard * rps
        self.num_rows = max(0, min(rps, rows.num_rows - self.start))

    def write_parquet(self, path: str | os.PathLike, *, row_group_size: int, compression: str = "zstd") -> None:
        """Write the shard to ``path`` (atomic), a row group of ``row_group_size`` rows at a time."""
        bins, schema = self.rows.bins, self.rows.schema
        binned = bins.rows(self.shard)
        rank = binned.column(RANK).to_numpy() - self.start
        if binned.num_rows != self.num_rows or len(np.unique(rank)) != self.num_rows:
            raise RuntimeError(f"shard {self.shard}: {binned.num_rows} rows binned for {self.num_rows} positions")
        where = np.empty(self.num_rows, np.int64)
        where[rank] = np.arange(binned.num_rows)
        with atomic_path(path) as tmp, pq.ParquetWriter(tmp, schema, compression=compression,
                                                         use_dictionary=dictionary_columns(schema)) as w:
            for s in range(0, max(self.num_rows, 1), row_group_size):
                part = gather(binned, where[s:s + row_group_size]).drop_columns([RANK])
                out = self.rows.finish(self.start + s, part)
                w.write_table(pa.Table.from_arrays(out.columns, schema=schema), row_group_size=row_group_size)
        del binned, part
        bins.drop(self.shard)
