"""Batches streamed from a Parquet pool file (``kdata.pools.parquet_rows``) made fit to take rows from
and to concatenate: view columns as plain ones, batches read in different modes as one schema."""

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
