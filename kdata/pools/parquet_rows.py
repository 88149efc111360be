"""Parquet pool files read within bounds: a footer may not declare more to decode than
``max(READ_FLOOR, READ_RATIO`` × the file's size on disk) — a few KiB of zstd can declare gigabytes —
and a byte column that could be a dictionary bomb is read dictionary-encoded, its decoded sizes
checked before it is expanded (``ParquetRows._mode``). A payload value over ``--max-file-mb``
becomes a row with a null payload and the reason in ``read_error``. ``ParquetRows`` streams a file
by row range (scoring workers) or by positions (``take``), a batch at a time. Columns in the shapes
other tools write (a Hugging Face image struct, ClassLabel ids, integer ids, pandas categories) are
read as the pool schema types them, on every path alike (``kdata.pools.parquet_shapes``)."""

from __future__ import annotations

import bisect
import collections
import itertools
import os
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from kdata.core.errors import KdataError
from kdata.dataset.schema import POOL_PAYLOADS, POOL_SCHEMA, READ_ERROR, check_pool_ids, conform, validate_pool
from kdata.pools.base import DEFAULT_LIMITS, PoolLimits, UnitRows
from kdata.pools.files import mib, over_cap
from kdata.pools.hf_label_meta import check_parquet_label_metadata
from kdata.pools.parquet_batches import is_bytes, null_where, same_types, unviewed, value_sizes
from kdata.pools.parquet_shapes import Shapes

READ_FLOOR, READ_RATIO = 256 << 20, 64  # a file may decode to max(floor, ratio × its size on disk), no more
ROW_BYTES = 16  # what Arrow spends per row and column (offsets, validity, indices) beyond the footer's sizes
STREAM_BYTES = 32 << 20  # rows are decoded in batches of about this many bytes (as the footer states sizes)
SMALL_GROUPS = 4  # row groups of up to STREAM_BYTES / this (footer sizes) are probed together (``ParquetRows._mode``)


def _per_row(rg: pq.RowGroupMetaData, columns: list[str]) -> int:
    """Bytes per row of ``columns`` in row group ``rg``, as its footer states them."""
    size = sum(rg.column(i).total_uncompressed_size for i in range(rg.num_columns)
               if rg.column(i).path_in_schema.split(".")[0] in columns)
    return max(1, size // max(1, rg.num_rows))


def _budget(path: Path) -> int:
    """The most kdata decodes from one Parquet file (images barely compress; a bomb compresses ~10^5x)."""
    return max(READ_FLOOR, READ_RATIO * os.path.getsize(path))


def _check_footer(path: Path, meta: pq.FileMetaData, columns: list[str]) -> None:
    """Refuse, before any page is read, a file whose footer declares more to decode for ``columns``
    than ``_budget`` (sizes as the footer states them, plus Arrow's per-row cost)."""
    cost = meta.num_rows * ROW_BYTES * len(columns)
    for g in range(meta.num_row_groups):
        rg = meta.row_group(g)
        cost += sum(rg.column(i).total_uncompressed_size for i in range(rg.num_columns)
                    if rg.column(i).path_in_schema.split(".")[0] in columns)
    if cost > _budget(path):
        raise KdataError(f"{path}: Parquet file declares {mib(cost)} to decode ({', '.join(columns)}) from "
                         f"{os.path.getsize(path):,} bytes on disk, over the {mib(_budget(path))} kdata decodes "
                         "from one file (a decompression bomb?); refused unread")


def _group_dictionaries(meta: pq.FileMetaData, columns: list[str]) -> list[tuple[str, ...]]:
    """Per row group, the byte ``columns`` with a dictionary page: read as dictionaries, since one value
    there may stand for any number of rows (plain pages hold what the footer declares). Equal tuples
    are shared, so a plan of thousands of row groups pickles small."""
    schema, shared = meta.schema.to_arrow_schema(), {}
    shapes = Shapes.of(schema)  # an image struct: its ``image.bytes`` leaf (``kdata.pools.parquet_shapes``)
    byte_cols = {c for c in columns if is_bytes(schema.field(c).type) or shapes.is_payload_struct(c)}
    out = []
    for g in range(meta.num_row_groups):
        rg = meta.row_group(g)
        found = {rg.column(i).path_in_schema for i in range(rg.num_columns) if rg.column(i).has_dictionary_page}
        cols = tuple(c for c in columns if shapes.leaf(c) in found and c in byte_cols)
        out.append(shared.setdefault(cols, cols))
    return out


def _bounded_read(path: Path, columns: list[str], groups: list[int] | None = None) -> pa.Table:
    """``columns`` of row ``groups`` (all: None) after ``_check_footer``, byte columns still
    dictionary-encoded (``_expand`` decodes them within bounds), an image struct ``Shapes.flat``;
    one line naming the file on failure."""
    try:
        meta = pq.read_metadata(path)
        _check_footer(path, meta, columns)
        groups = list(range(meta.num_row_groups)) if groups is None else groups
        per_group, shapes = _group_dictionaries(meta, columns), Shapes.of(meta.schema.to_arrow_schema())
        found = {c for g in groups for c in per_group[g]}
        pf = pq.ParquetFile(path, read_dictionary=[shapes.leaf(c) for c in columns if c in found]
                            + shapes.dictionary_leaves(columns))
        return shapes.flat(shapes.read_groups(pf, groups, columns))
    except KdataError:
        raise
    except Exception as exc:  # noqa: BLE001  (not Parquet, truncated…: one line naming the file)
        raise KdataError(f"{path}: cannot read Parquet ({str(exc).splitlines()[0]})") from None


def _expand(table: pa.Table, *, path: Path, limits: PoolLimits) -> tuple[pa.Table, list[str | None]]:
    """Decode a ``_bounded_read`` table: payload values over ``limits.max_file_bytes`` nulled with
    the reason (per row, else None), and the file refused if what is left decodes past ``_budget``."""
    errors: list[str | None] = [None] * table.num_rows
    total, cap = 0, limits.max_file_bytes
    for name in table.column_names:
        col = table.column(name)
        if not is_bytes(col.type.value_type if pa.types.is_dictionary(col.type) else col.type):
            continue
        sizes = value_sizes(col)
        if name in POOL_PAYLOADS and (pc.max(sizes).as_py() or 0) > cap:
            over = pc.fill_null(pc.greater(sizes, cap), False)
            for i, n in enumerate(sizes.to_pylist()):
                if n is not None and n > cap and errors[i] is None:
                    errors[i] = f"column '{name}': " + over_cap(n, limits)
            col, sizes = null_where(col, over), pc.if_else(over, 0, sizes)
        total += pc.sum(sizes).as_py() or 0
        if total > _budget(path):
            raise KdataError(f"{path}: Parquet rows decode to over {mib(total)} from {os.path.getsize(path):,} "
                             f"bytes on disk, over the {mib(_budget(path))} kdata decodes from one file; refused")
        if pa.types.is_dictionary(col.type):
            col = col.cast(col.type.value_type)
        table = table.set_column(table.column_names.index(name), name, col)
    return table, errors


def _decoded(path: Path, columns: list[str], *, limits: PoolLimits) -> pa.Table:
    """``columns`` of every row, read within bounds, as the pool schema types them (``Shapes.convert``)."""
    table, _ = Shapes.of(pq.read_schema(path)).convert(_bounded_read(path, columns))
    return _expand(table, path=path, limits=limits)[0]


def _finish_parquet(table: pa.Table, *, name: str, path: Path, offset: int = 0, rows=None) -> pa.Table:
    """Rows read from a Parquet pool file → pool schema (plus ``read_error``): ``<file>:<row>`` ids
    where the file has none (rows ``offset…``, or the positions ``rows``)."""
    if "sample_id" not in table.column_names:  # readable, stable ids: <file>:<row>
        rows = range(offset, offset + table.num_rows) if rows is None else rows
        ids = pa.array([f"{name}:{i}" for i in rows], pa.string())
        table = table.append_column("sample_id", ids)
    validate_pool(table.schema, where=str(path))
    if "kind" not in table.column_names:
        table = table.append_column("kind", pa.array(["original"] * table.num_rows, pa.string()))
    return conform(table, POOL_SCHEMA, keep_extra_prefix=None, extra={READ_ERROR: pa.string()})


class ParquetRows(UnitRows):
    """A Parquet pool file by row range or by positions, streamed: only the rows asked for are kept.

    Opening it reads the footer and the ``sample_id`` column only, and checks what ``read`` checks
    (the schema, null ids, the footer's sizes against ``_budget``), so a bad file is one line before
    any decoding starts. Rows are decoded in batches of about ``STREAM_BYTES`` from the row group
    that holds them (pages read as they are reached, not a row group pre-buffered whole: writers'
    defaults put up to a million rows, many GB of images, in one row group). A cursor continues
    where the last call stopped, so a worker's increasing batches, or ``take`` over sorted
    positions, read the file once and hold one batch at a time."""

    def __init__(self, path: Path, name: str, *, limits: PoolLimits = DEFAULT_LIMITS):
        self.path, self.name, self.limits = Path(path), name, limits
        try:
            meta = pq.read_metadata(path)
            schema = meta.schema.to_arrow_schema()
        except Exception as exc:  # noqa: BLE001  (not Parquet, truncated…: one line naming the file)
            raise KdataError(f"{path}: cannot read Parquet ({str(exc).splitlines()[0]})") from None
        check_parquet_label_metadata(schema, where=str(path))  # ClassLabel names: read faithfully or refused
        self.columns = [n for n in schema.names if n in POOL_SCHEMA.names]
        self.shapes = Shapes.of(schema)  # how other tools' column types are read (``kdata.pools.parquet_shapes``)
        if "sample_id" not in schema.names:
            schema = schema.append(pa.field("sample_id", pa.string()))
        validate_pool(self.shapes.pool_types(schema), where=str(path))
        _check_footer(self.path, meta, self.columns)
        self.has_ids = "sample_id" in self.columns
        self._ids = self._read_ids() if self.has_ids else None
        sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
        self.bounds = [0, *itertools.accumulate(sizes)]  # row group g holds rows [bounds[g], bounds[g + 1])
        self.num_rows = meta.num_rows
        self.per_row = [_per_row(meta.row_group(g), self.columns) for g in range(meta.num_row_groups)]
        self.dictionary = _group_dictionaries(meta, self.columns)
        self.modes: dict[int, tuple[tuple[str, ...], int]] = {}  # row group -> (read as dictionaries, rows per batch)
        st = os.stat(self.path)
        self.signature = (str(self.path), name, limits, st.st_size, st.st_mtime_ns)  # which file, as it is now
        self.__setstate__(self.__dict__)

    def __getstate__(self):
        # a task ships the plan, never an open file, a decoded batch nor the id column
        return {k: v for k, v in self.__dict__.items() if k not in ("_files", "_cursor", "_lock", "_last_probe")} \
            | {"_ids": None, "modes": {}}

    def __reduce__(self):
        # unpickled in a worker as the plan that worker already reads from, if any: its cursor goes on
        # where the worker's last task stopped instead of decoding the row group from its start again
        return _live_plan, (self.__getstate__(),)

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._files, self._cursor, self._lock, self._last_probe = {}, None, threading.Lock(), (-1, 0)

    def _read_ids(self) -> pa.Array:
        """The ``sample_id`` column, decoded within ``_budget``; a null or empty id is one line."""
        ids = _decoded(self.path, ["sample_id"], limits=self.limits)
        check_pool_ids(ids, where=str(self.path))
        ids = ids.column("sample_id").combine_chunks().cast(pa.string())
        empty = pc.equal(pc.utf8_length(ids), 0)
        if pc.any(empty).as_py():  # "" names no sample (and two of them would be one id)
            row = int(np.flatnonzero(empty.to_numpy(zero_copy_only=False))[0])
            raise KdataError(f"{self.path}: column 'sample_id' row {row}: empty id ({pc.sum(empty).as_py()} empty "
                             "id(s) in all); every sample needs an id")
        return ids

    def sample_ids(self) -> pa.Array:
        """The ids from the ``sample_id`` column read on opening (``<file>:<row>`` where there is none):
        no payload is read."""
        if self.has_ids:
            if self._ids is None:  # a shipped plan: read the column again
                self._ids = self._read_ids()
            return self._ids
        return pa.array([f"{self.name}:{i}" for i in range(self.num_rows)], pa.string())

    def _mode(self, g: int) -> tuple[tuple[str, ...], int]:
        """How row group ``g`` is streamed: (byte columns read as dictionaries, rows per batch).

        A byte column with a dictionary page could be a dictionary bomb (one large value referenced
        by every row: the footer declares only the indices). Its dictionary is read once (bounded by
        the footer) for the longest value V: where rows × V fits ``_budget`` no bomb is possible and
        the column is read plain, in batches of at most ``STREAM_BYTES`` / V rows; otherwise it is read
        as a dictionary, so ``_expand`` checks its decoded sizes before expanding. (Reading every
        dictionary column as a dictionary is not an option: where a writer fell back to plain pages,
        Arrow grows one dictionary of every value in the row group, 3× the column.)"""
        if g not in self.modes:
            self._probe_groups([g])
        return self.modes[g]

    def _probe_groups(self, groups) -> None:
        """``_probe`` the row groups ``groups`` (ascending) not probed yet: a large one by its first row,
        consecutive small ones with the same dictionary columns together, up to ``STREAM_BYTES`` /
        ``SMALL_GROUPS`` a read. A scan going on where the last probe ended probes ahead, twice as far
        each time: thousands of tiny row groups cost a few reads, a sparse ``take`` only what it needs
        (and a damaged row group ahead fails only the read that needs it)."""
        todo, i, small = [int(g) for g in groups if g not in self.modes], 0, STREAM_BYTES // SMALL_GROUPS
        size_of = lambda h: self.per_row[h] * (self.bounds[h + 1] - self.bounds[h])  # noqa: E731
        while i < len(todo):
            g, cols = todo[i], self.dictionary[todo[i]]
            if size_of(g) > small:
                self._probe(g, g + 1, first_row=True)
                i += 1
                continue
            ahead = min(small, 2 * self._last_probe[1]) if g == self._last_probe[0] else 0
            end = needed = g
            size = 0
            while (end < len(self.per_row) and end not in self.modes and self.dictionary[end] == cols
                   and size + size_of(end) <= small and (i < len(todo) and todo[i] == end or size < ahead)):
                i, needed = (i + 1, end + 1) if i < len(todo) and todo[i] == end else (i, needed)
                size, end = size + size_of(end), end + 1
            try:
                self._probe(g, end)
            except Exception:  # noqa: BLE001  (a row group read ahead may be damaged: probe those needed)
                if end == needed:
                    raise
                self._probe(g, end := needed)
            self._last_probe = (end, size)

    def _file(self, key: tuple, read_dictionary: tuple[str, ...]) -> pq.ParquetFile:
        if key not in self._files:  # pages read as reached, not a row group pre-buffered whole
            read_dictionary = [*map(self.shapes.leaf, read_dictionary), *self.shapes.dictionary_leaves(self.columns)]
            self._files[key] = pq.ParquetFile(self.path, read_dictionary=read_dictionary, pre_buffer=False,
                                              buffer_size=1 << 20)
        return self._files[key]

    def _probe(self, g: int, end: int, *, first_row: bool = False) -> None:
        """``_mode`` of row groups ``g…end`` (the same dictionary columns): those columns read as
        dictionaries in one call (only the first row of a large group) for each group's longest value."""
        cols, groups = self.dictionary[g], list(range(g, end))
        longest = np.ones((end - g, len(cols)), np.int64)
        if cols:
            pf = self._file(("probe", *cols), cols)
            table = self.shapes.flat(
                pa.Table.from_batches([next(pf.iter_batches(batch_size=1, row_groups=groups, columns=list(cols),
                                                            use_threads=False))]) if first_row
                else self.shapes.read_groups(pf, groups, list(cols), use_threads=False))
        for j, c in enumerate(cols):  # each chunk's longest value (Arrow reads a chunk per row group)
            chunks = [ch for ch in table.column(c).chunks if len(ch)]
            values = [ch.dictionary if pa.types.is_dictionary(ch.type) else ch for ch in chunks]
            lengths = np.nan_to_num(pc.binary_length(pa.concat_arrays(values)).to_numpy(zero_copy_only=False)) \
                if values else np.zeros(0)
            cut, rows = np.cumsum([0, *map(len, values)]), np.cumsum([0, *map(len, chunks)]) + self.bounds[g]
            for a, b, k in zip(np.searchsorted(self.bounds, rows[:-1], side="right") - 1 - g,
                               np.searchsorted(self.bounds, rows[1:] - 1, side="right") - 1 - g, range(len(chunks))):
                longest[a:b + 1, j] = np.maximum(longest[a:b + 1, j], lengths[cut[k]:cut[k + 1]].max(initial=1))
        budget = _budget(self.path)
        for k, h in enumerate(groups):
            exact = tuple(c for j, c in enumerate(cols) if (self.bounds[h + 1] - self.bounds[h]) * longest[k, j] > budget)
            v = max([1, *(int(longest[k, j]) for j, c in enumerate(cols) if c not in exact)])
            self.modes[h] = (exact, int(min(65_536, max(1, STREAM_BYTES // max(self.per_row[h], v)))))

    def _batch_at(self, pos: int) -> tuple[int, pa.RecordBatch]:
        """(first row, batch) of the decoded batch holding row ``pos`` (columns that could be a bomb
        still dictionary-encoded, an image struct ``Shapes.flat``). The cursor, one iterator over ``pos``'s row group and the probed
        ones after it read in the same mode, moves forward; it restarts at ``pos``'s group when ``pos``
        is behind it, past its groups or over a whole group ahead (groups between are not decoded)."""
        g = bisect.bisect_right(self.bounds, pos) - 1
        cur = self._cursor
        if cur is not None and (cur[1] > pos or g >= cur[0]
                                or g > bisect.bisect_right(self.bounds, cur[1] + cur[2].num_rows)):
            cur = None
        if cur is None:
            (exact, batch), end = self._mode(g), g + 1
            while end < len(self.per_row) and self.modes.get(end, (None,))[0] == exact:
                batch, end = min(batch, self.modes[end][1]), end + 1
            it = map(self.shapes.flat, self.shapes.iter_batches(self._file(exact, exact), list(range(g, end)),
                                                                batch_size=batch, columns=self.columns))
            cur = self._cursor = [end, self.bounds[g], next(it), it]
        while pos >= cur[1] + cur[2].num_rows:
            cur[1], cur[2] = cur[1] + cur[2].num_rows, next(cur[3])
        return cur[1], cur[2]

    def _gather(self, rows: np.ndarray) -> pa.Table:
        """The decoded rows at sorted positions ``rows`` (dictionary-encoded), one batch held at a time."""
        parts, i = [], 0
        try:
            with self._lock:
                self._probe_groups(np.unique(np.searchsorted(self.bounds, rows, side="right") - 1))
                while i < rows.size:
                    first, batch = self._batch_at(int(rows[i]))
                    j = int(np.searchsorted(rows, first + batch.num_rows, side="left"))
                    parts.append(unviewed(batch).take(pa.array(rows[i:j] - first)))
                    i = j
            if not parts:
                return _bounded_read(self.path, self.columns, [])
            return pa.Table.from_batches(same_types(parts))
        except KdataError:
            raise
        except Exception as exc:  # noqa: BLE001  (a damaged page, a short row group: one line naming the file)
            self._cursor = None
            raise KdataError(f"{self.path}: cannot read Parquet ({(str(exc) or type(exc).__name__).splitlines()[0]})") \
                from None

    def _finish(self, table: pa.Table, rows: np.ndarray) -> pa.Table:
        table, shape_errors = self.shapes.convert(table)
        table, errors = _expand(table, path=self.path, limits=self.limits)
        errors = [a or b for a, b in zip(shape_errors, errors)]
        table = table.append_column(READ_ERROR, pa.array(errors, pa.string()))
        return _finish_parquet(table, name=self.name, path=self.path, rows=rows.tolist())

    def read_rows(self, start: int, stop: int) -> pa.Table:
        rows = np.arange(start, min(stop, self.num_rows), dtype=np.int64)
        return self._finish(self._gather(rows), rows)

    def take(self, rows) -> pa.Table:
        """Rows at sorted positions ``rows``: only the batches holding them are kept (memory: one batch
        plus the rows taken, whatever the file's or its row groups' size)."""
        rows = np.asarray(rows, np.int64)
        return self._finish(self._gather(rows), rows)

    def read_column(self, name: str) -> pa.ChunkedArray | None:
        """Column ``name`` alone, read within bounds and decoded (None when the file has no such column)."""
        if name == "sample_id":
            return pa.chunked_array([self.sample_ids()])
        if name not in self.columns:
            return None
        return _decoded(self.path, [name], limits=self.limits).column(name)


_LIVE: collections.OrderedDict = collections.OrderedDict()  # per process: the plans read from last
LIVE_PLANS = 4  # at most this many kept (each holds at most one decoded batch)


def _live_plan(state: dict) -> ParquetRows:
    """The plan a process already reads file ``state`` from (its cursor where the last task left it),
    else a new one; a changed file (size, mtime) is a new plan."""
    plan = _LIVE.get(state["signature"])
    if plan is None:
        plan = ParquetRows.__new__(ParquetRows)
        plan.__setstate__(state)
        _LIVE[state["signature"]] = plan
        while len(_LIVE) > LIVE_PLANS:
            _LIVE.popitem(last=False)
    else:
        _LIVE.move_to_end(state["signature"])
    return plan


def parquet_labels(path: Path) -> set[str]:
    """The distinct non-null values of a Parquet file's ``label`` column, reading only that column and
    decoding only its distinct values (none when it has no such column, cannot be read or is over
    ``_budget``: reading the unit reports the problem)."""
    try:
        schema = pq.read_schema(path)
        if "label" not in schema.names:
            return set()
        col = Shapes.of(schema).convert(_bounded_read(path, ["label"]))[0].column("label")  # ClassLabel ids: names
        vt = col.type.value_type if pa.types.is_dictionary(col.type) else col.type
        if not (pa.types.is_string(vt) or pa.types.is_large_string(vt) or pa.types.is_string_view(vt)):
            return set()  # a wrongly typed label column: validate_pool names it when the unit is read
        if not pa.types.is_dictionary(col.type):
            return set(pc.unique(col.cast(pa.string())).drop_null().to_pylist())
        values = set()
        for c in col.chunks:
            values.update(c.dictionary.take(pc.unique(c.indices).drop_null()).cast(pa.string()).to_pylist())
    except Exception:  # noqa: BLE001
        return set()
    return values
