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

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa

from kdata.core.atomic import write_row_groups

RANK = "__kdata_rank"  # the row's position in the output, carried beside it while binned
OPEN_FILES = 64  # bin files open at once; more output shards than this share a bin, split on first read


class ShardBins:
    """Rows of an output of ``num_rows`` rows binned by shard (``rows_per_shard`` rows each) as they
    arrive; ``rows(i)`` gives shard ``i``'s rows back (any order, with ``RANK``).

    At most ``OPEN_FILES`` files are written while the rows arrive, each holding a run of consecutive
    shards (one shard each when there are no more shards than files): a file is never closed and
    reopened, so a pool read in many batches leaves one file per bin, not one per batch. A bin of
    several shards is split into one file per shard when its first shard is read (a bucket sort in two
    passes): every row is written at most twice, and one record batch is held at a time."""

    def __init__(self, scratch: str | os.PathLike, *, num_rows: int, rows_per_shard: int):
        self.scratch, self.num_rows, self.rows_per_shard = Path(scratch), num_rows, rows_per_shard
        self.n_shards = max(1, -(-num_rows // rows_per_shard))
        self.per_bin = max(1, -(-self.n_shards // OPEN_FILES))  # consecutive shards per bin file
        self.schema: pa.Schema | None = None  # of the rows added (with RANK)
        self._held: list[pa.Table] = []  # one shard: its rows, in memory
        self._open: dict[int, tuple] = {}  # bin -> (writer, sink) while rows arrive
        self._bins: dict[int, Path] = {}  # bin -> its file
        self._shards: dict[int, Path] = {}  # shard -> its own file, once its bin is split

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
        for b, part in _groups(table, np.asarray(ranks, np.int64) // (self.rows_per_shard * self.per_bin)):
            self._writer(b).write_table(part)

    def _writer(self, b: int) -> pa.ipc.RecordBatchFileWriter:
        if b not in self._open:
            if b in self._bins:
                raise RuntimeError(f"bin {b}: rows added after it was read")
            self.scratch.mkdir(parents=True, exist_ok=True)
            path = self._bins[b] = self.scratch / f"bin-{b:05d}.arrow"
            sink = pa.OSFile(str(path), "wb")
            self._open[b] = (pa.ipc.new_file(sink, self.schema), sink)
        return self._open[b][0]

    def _close(self, b: int) -> None:
        if b in self._open:
            writer, sink = self._open.pop(b)
            writer.close()
            sink.close()

    def close(self) -> None:
        """Close the files still open (``rows`` closes a bin's own)."""
        for b in list(self._open):
            self._close(b)

    def _split(self, b: int) -> None:
        """Bin ``b``'s rows into one file per shard, read a record batch at a time; the bin file goes."""
        self._close(b)
        path = self._bins.pop(b)
        writers = {}
        try:
            reader = pa.ipc.open_file(pa.memory_map(str(path)))
            for i in range(reader.num_record_batches):
                batch = pa.Table.from_batches([reader.get_batch(i)])
                for shard, part in _groups(batch, batch.column(RANK).to_numpy() // self.rows_per_shard):
                    if shard not in writers:
                        out = self._shards[shard] = self.scratch / f"shard-{shard:05d}.arrow"
                        sink = pa.OSFile(str(out), "wb")
                        writers[shard] = (pa.ipc.new_file(sink, self.schema), sink)
                    writers[shard][0].write_table(part)
            del reader, batch
        finally:
            for writer, sink in writers.values():
                writer.close()
                sink.close()
        path.unlink(missing_ok=True)

    def rows(self, shard: int) -> pa.Table:
        """Shard ``shard``'s rows as binned (arrival order, with ``RANK``); files are memory-mapped."""
        if self.n_shards == 1:
            return pa.concat_tables(self._held) if self._held else self.schema.empty_table()
        b = shard // self.per_bin
        if self.per_bin == 1:
            self._close(b)
            path = self._bins.get(b)
        else:
            if b in self._bins:
                self._split(b)
            path = self._shards.get(shard)
        if path is None:
            return self.schema.empty_table()
        return pa.ipc.open_file(pa.memory_map(str(path))).read_all()

    def drop(self, shard: int) -> None:
        """Forget shard ``shard``'s rows (written): memory released, its file removed."""
        if self.n_shards == 1:
            self._held = []
        path = self._bins.pop(shard, None) if self.per_bin == 1 else self._shards.pop(shard, None)
        if path is not None:
            path.unlink(missing_ok=True)


def _groups(table: pa.Table, keys: np.ndarray):
    """(key, the rows of ``table`` with that key, in arrival order) for each key present: slices of
    ``table``, put in key order first (one copy) when its rows are not in key order already."""
    order = np.argsort(keys, kind="stable")
    if (np.diff(order) != 1).any():
        table, keys = table.take(pa.array(order)), keys[order]
    edges = np.flatnonzero(np.r_[True, np.diff(keys) != 0, True])
    for a, b in zip(edges[:-1], edges[1:]):
        yield int(keys[a]), table.slice(int(a), int(b - a))


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

        def groups():
            for s in range(0, max(self.num_rows, 1), row_group_size):
                part = gather(binned, where[s:s + row_group_size]).drop_columns([RANK])
                yield pa.Table.from_arrays(self.rows.finish(self.start + s, part).columns, schema=schema)

        write_row_groups(path, schema, groups(), compression=compression)
        del binned
        bins.drop(self.shard)
