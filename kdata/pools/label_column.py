"""One string column of every row of a pool (its web ``label``, its ``domain``), without reading the payloads
where the reader can address columns (a Parquet file reads its id and that column alone; an image folder
knows its labels from its paths)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc


def unit_column(unit, name: str) -> tuple[pa.Array, pa.Array]:
    """(sample ids, column ``name`` as strings, null where a row has none) of one pool unit."""
    plan = unit.plan()
    ids = plan.sample_ids()
    col = plan.read_column(name)
    return ids, pa.nulls(len(ids), pa.string()) if col is None else col.combine_chunks().cast(pa.string())


def pool_column(pool, name: str) -> tuple[pa.Array, pa.Array]:
    """``unit_column`` over every unit, in pool order."""
    parts = [unit_column(unit, name) for unit in pool.units]
    if not parts:
        return pa.array([], pa.string()), pa.array([], pa.string())
    return pa.concat_arrays([i for i, _ in parts]), pa.concat_arrays([c for _, c in parts])


def labels_for(ids, pool) -> pa.Array:
    """The pool's label of each of ``ids`` (null where the pool has none or lacks the id)."""
    pool_ids, labels = pool_column(pool, "label")
    return pc.take(labels, pc.index_in(ids, value_set=pool_ids))
