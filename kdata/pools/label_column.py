"""The web ``label`` of every row of a pool, without reading its payloads where the reader can address
columns (a Parquet file reads its id and label columns alone; an image folder knows them from its paths)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc


def pool_labels(pool) -> tuple[pa.Array, pa.Array]:
    """(sample ids, labels as strings, null where a row has none), unit by unit in pool order."""
    ids, labels = [], []
    for unit in pool.units:
        plan = unit.plan()
        i = plan.sample_ids()
        lab = plan.read_column("label")
        ids.append(i)
        labels.append(pa.nulls(len(i), pa.string()) if lab is None else lab.combine_chunks().cast(pa.string()))
    if not ids:
        return pa.array([], pa.string()), pa.array([], pa.string())
    return pa.concat_arrays(ids), pa.concat_arrays(labels)


def labels_for(ids, pool) -> pa.Array:
    """The pool's label of each of ``ids`` (null where the pool has none or lacks the id)."""
    pool_ids, labels = pool_labels(pool)
    return pc.take(labels, pc.index_in(ids, value_set=pool_ids))
