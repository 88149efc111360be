"""Batches streamed from a Parquet pool file (``kdata.pools.parquet_rows``) made fit to take rows from
and to concatenate: view columns as plain ones, batches read in different modes as one schema; the
decoded sizes of byte columns, dictionary-encoded ones included, read without expanding them."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc


def unviewed(batch: pa.RecordBatch) -> pa.RecordBatch:
    """``batch`` with string/binary view columns (polars' newest Arrow) as plain string/binary, which
    Arrow's ``take`` and kdata's schema use (a batch holds at most ``STREAM_BYTES`` or one value)."""
    views = {pa.string_view(): pa.large_string(), pa.binary_view(): pa.large_binary()}
    if not any(f.type in views for f in batch.schema):
        return batch
    return pa.RecordBatch.from_arrays([c.cast(views[c.type]) if c.type in views else c for c in batch.columns],
                                      names=batch.schema.names)


def same_types(parts: list[pa.RecordBatch]) -> list[pa.RecordBatch]:
    """Batches of row groups streamed in different modes (``kdata.pools.parquet_rows``: a column read as a
    dictionary in one group, plain in another) made one schema: the plain ones dictionary-encoded, so
    ``_expand`` still sees every dictionary's sizes before expanding it."""
    if len({b.schema for b in parts}) == 1:
        return parts
    dict_cols = {f.name: f.type for b in parts for f in b.schema if pa.types.is_dictionary(f.type)}
    out = []
    for b in parts:
        cols = [c if n not in dict_cols or pa.types.is_dictionary(c.type)
                else pc.dictionary_encode(c.cast(dict_cols[n].value_type)).cast(dict_cols[n])
                for n, c in zip(b.schema.names, b.columns)]
        out.append(pa.RecordBatch.from_arrays(cols, names=b.schema.names))
    return out


def is_bytes(t: pa.DataType) -> bool:
    return any(f(t) for f in (pa.types.is_string, pa.types.is_large_string, pa.types.is_binary,
                              pa.types.is_large_binary, pa.types.is_string_view, pa.types.is_binary_view))


def value_sizes(col: pa.ChunkedArray) -> pa.ChunkedArray:
    """Each value's decoded byte length (null for null), without decoding a dictionary column."""
    if pa.types.is_dictionary(col.type):
        return pa.chunked_array([pc.take(pc.binary_length(c.dictionary).cast(pa.int64()), c.indices)
                                 for c in col.chunks], pa.int64())
    return pc.binary_length(col).cast(pa.int64())


def null_where(col: pa.ChunkedArray, over: pa.ChunkedArray) -> pa.ChunkedArray:
    """``col`` with the values where ``over`` holds nulled (a dictionary column: its indices)."""
    if not pa.types.is_dictionary(col.type):
        return pc.if_else(over, pa.scalar(None, col.type), col)
    over = over.combine_chunks()
    out, at = [], 0
    for c in col.chunks:
        hit = over.slice(at, len(c))
        out.append(pa.DictionaryArray.from_arrays(pc.if_else(hit, pa.scalar(None, c.indices.type), c.indices),
                                                  c.dictionary))
        at += len(c)
    return pa.chunked_array(out, col.type)
