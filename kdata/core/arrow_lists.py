"""A list column of fixed width as an (n, k) array: the one vectorised check-and-convert.

Scores tables (``teacher_logits``, ``embedding``…), curated shards (``teacher_topk_*``) and
bring-your-own predictions all hold one list of numbers per row. ``list_matrix`` checks such a
column in a few vectorised passes (no Python loop over rows) and reshapes its values:

* a null list, a list of another length than the width (row 0's unless given) and a null value
  inside a list are each a ``ListColumnError`` naming the first bad row;
* the error is a ``KdataError`` whose default line reads ``{where}: column 'NAME' …``; a caller
  whose messages say more (the shard path and row group, the file's ``sample_id``) rewords it from
  the error's ``problem``, ``row``, ``length`` and ``width``.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from kdata.core.errors import KdataError


class ListColumnError(KdataError):
    """The first bad row of a list column: ``problem`` is ``"null"`` (a null list), ``"ragged"`` (a list of
    ``length`` values where ``width`` are expected: row 0's, or the width asked for when ``given``) or
    ``"null value"`` (a null inside a list)."""

    def __init__(self, *, where: str, name: str, problem: str, row: int, length: int | None = None,
                 width: int | None = None, given: bool = False):
        self.name, self.problem, self.row, self.length, self.width = name, problem, row, length, width
        if problem == "null":
            what = f"is null in row {row}"
        elif problem == "ragged" and given:
            what = f"has {length} values in row {row}, expected {width}"
        elif problem == "ragged":
            what = f"has ragged lists (row {row} has {length} values, row 0 has {width})"
        else:
            what = f"holds a null value inside the list in row {row}"
        super().__init__(f"{where}: column '{name}' {what}")


def _column(table_or_column, name: str) -> pa.Array:
    col = table_or_column.column(name) if isinstance(table_or_column, pa.Table) else table_or_column
    return col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col


def list_width(table_or_column, name: str, *, where: str, width: int | None = None) -> int:
    """The width of list column ``name`` (of a table, or the column itself): ``width`` when given, else
    row 0's (0 for no rows); a null list or a list of another length is a ``ListColumnError``."""
    col = _column(table_or_column, name)
    if col.null_count:
        row = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
        raise ListColumnError(where=where, name=name, problem="null", row=row)
    if pa.types.is_fixed_size_list(col.type) and width is None:
        return col.type.list_size
    if not len(col):
        return 0 if width is None else width
    lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
    w = int(lengths[0]) if width is None else width
    bad = np.flatnonzero(lengths != w)
    if len(bad):
        r = int(bad[0])
        raise ListColumnError(where=where, name=name, problem="ragged", row=r, length=int(lengths[r]), width=w,
                              given=width is not None)
    return w


def list_matrix(table_or_column, name: str, *, where: str, dtype=np.float32, width: int | None = None,
                copy: bool = False) -> np.ndarray:
    """List column ``name`` as an (n, width) array of ``dtype`` (``list_width`` checks the lists; a null
    value inside one is a ``ListColumnError`` too). ``copy``: always a fresh, writable array."""
    col = _column(table_or_column, name)
    w = list_width(col, name, where=where, width=width)
    values = col.flatten()
    if values.null_count:
        i = int(np.flatnonzero(values.is_null().to_numpy(zero_copy_only=False))[0])
        raise ListColumnError(where=where, name=name, problem="null value", row=i // max(w, 1))
    return values.to_numpy(zero_copy_only=False).astype(dtype, copy=copy).reshape(len(col), w)
