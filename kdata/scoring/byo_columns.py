"""Column checks of a bring-your-own predictions file (``kdata.scoring.byo``): every bad value is one
line naming the file, the column and the first bad row (and its ``sample_id``), never a crash later."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from kdata.core.arrow_lists import ListColumnError, list_matrix
from kdata.core.errors import KdataError

PASSTHROUGH = {"domain": pa.string(), "teacher_loss": pa.float32(), "student_loss": pa.float32(),
               "teacher_logprob": None, "reference_logprob": None}


def fail_at(where: str, col: str, row: int | None, ids: pa.Array | None, msg: str):
    at = ""
    if row is not None:
        sid = ids[row].as_py() if ids is not None and row < len(ids) else None
        at = f" row {row}" + (f" (sample_id '{sid}')" if sid is not None else "")
    raise KdataError(f"{where}: column '{col}'{at}: {msg}")


def check_list_column(table: pa.Table, name: str, *, where: str, width: int | None = None,
                      width_of: str | None = None, integer: bool = False, offset: int = 0,
                      ids: pa.Array | None = None) -> np.ndarray:
    """A list-of-numbers column as a (rows × width) array, or a one-line error on the first bad row.

    For a batch of a larger file, ``offset`` is the batch's first row and ``ids`` the file's ids,
    so that errors name the row in the file; ``width`` without ``width_of`` is row 0's width."""
    if ids is None:
        ids = table.column("sample_id").combine_chunks()
    col = table.column(name).combine_chunks()
    t = col.type
    if not (pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)):
        fail_at(where, name, None, None, f"expected a list of numbers per row, got {t}")
    vt = t.value_type
    if not (pa.types.is_floating(vt) or pa.types.is_integer(vt)):
        fail_at(where, name, None, None, f"expected numbers in the lists, got {vt}")
    problem = None
    try:
        values = list_matrix(col, name, where=where, dtype=np.int64 if integer else np.float32, width=width)
    except ListColumnError as e:
        problem = e
    if problem is not None:
        row = offset + problem.row
        if problem.problem == "null":
            fail_at(where, name, row, ids, "null list")
        if problem.problem == "null value":
            fail_at(where, name, row, ids, "null value inside the list")
        fail_at(where, name, row, ids, f"ragged lists: {problem.length} values, but row 0 has {problem.width}"
                if width_of is None else
                f"mismatched class counts: {problem.length} values, but {width_of} has {problem.width}")
    if values.size == 0 and len(values):
        fail_at(where, name, offset, ids, "empty list")
    if not integer:
        bad = ~np.isfinite(values)
        if bad.any():
            r, c = np.argwhere(bad)[0]
            fail_at(where, name, offset + int(r), ids, f"non-finite value {values[r, c]} (NaN/inf)")
    return values


def label_column(table: pa.Table, *, where: str, ids: pa.Array, num_classes: int | None) -> np.ndarray:
    """``label_idx`` as int32 (null: -1), or one line naming the first row that is not a whole number or,
    given ``num_classes``, not −1 (unknown) or a class of the predictions (a label of another label set
    would otherwise pass as unknown and silently skip the label checks). Without classes (log-prob
    files) a label cannot name one: every value is read as unknown."""
    li = table.column("label_idx").combine_chunks()
    if not (pa.types.is_integer(li.type) or pa.types.is_floating(li.type) or pa.types.is_null(li.type)):
        fail_at(where, "label_idx", None, None, f"expected a class index (integer) per row, got {li.type}")
    v = li.cast(pa.float64()).to_numpy(zero_copy_only=False)
    bad = np.flatnonzero(~np.isnan(v) & ((v != np.round(v)) | (np.abs(v) > 2**31 - 1)))
    if len(bad):
        fail_at(where, "label_idx", int(bad[0]), ids, f"{float(v[bad[0]])!r} is not a class index (a whole number)")
    label = np.nan_to_num(v, nan=-1).astype(np.int32)
    if num_classes is None:
        return np.full(len(label), -1, np.int32)
    bad = np.flatnonzero((label < -1) | (label >= num_classes))
    if len(bad):
        fail_at(where, "label_idx", int(bad[0]), ids, f"{int(label[bad[0]])} is not a class of the predictions "
                f"(0 to {num_classes - 1}, or -1 for unknown)")
    return label


def passthrough_column(table: pa.Table, name: str, typ, *, where: str, ids: pa.Array) -> pa.Array:
    """A column the methods read as given (``PASSTHROUGH``): cast, and numbers checked finite, so a
    bad value is one line naming the row, not a crash after the selection (a NaN loss cannot be
    written to the manifest) or a silent −inf score."""
    col = table.column(name).combine_chunks()
    if name == "domain":
        try:
            return col.cast(typ)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            fail_at(where, name, None, None, f"expected a string per row, got {col.type}")
    flat = pc.list_flatten(col) if pa.types.is_list(col.type) or pa.types.is_large_list(col.type) else col
    if not (pa.types.is_floating(flat.type) or pa.types.is_integer(flat.type)):
        fail_at(where, name, None, None, f"expected numbers{' (or lists of numbers)' if typ is None else ''}, got {col.type}")
    values = flat.cast(pa.float64()).to_numpy(zero_copy_only=False)
    bad = np.flatnonzero(~np.isfinite(values))
    if len(bad):
        if flat is col:
            row = int(bad[0])
        else:
            starts = col.offsets.to_numpy()[:-1] - col.offsets[0].as_py()
            row = int(np.searchsorted(starts, bad[0], side="right") - 1)
        fail_at(where, name, row, ids, f"non-finite value {values[bad[0]]} (NaN/inf, or null)")
    return col.cast(typ) if typ is not None else col


def check_token_lengths(table: pa.Table, *, where: str, ids: pa.Array) -> None:
    """Per-token ``teacher_logprob`` and ``reference_logprob`` lists must pair token for token: one line
    naming the first row whose lengths differ. MiniPLM compares the two models' mean log-probability
    per token, which over two tokenizations of one text are in different units (kdata's own text
    scoring converts to bytes when the tokenizers differ, ``kdata.scoring.text``)."""
    t, r = (table.column(c).combine_chunks() for c in ("teacher_logprob", "reference_logprob"))
    if not all(pa.types.is_list(c.type) or pa.types.is_large_list(c.type) for c in (t, r)):
        return
    lt = pc.list_value_length(t).to_numpy(zero_copy_only=False)
    lr = pc.list_value_length(r).to_numpy(zero_copy_only=False)
    bad = np.flatnonzero(lt != lr)
    if len(bad):
        fail_at(where, "reference_logprob", int(bad[0]), ids, f"{int(lr[bad[0]])} per-token values, but "
                f"teacher_logprob has {int(lt[bad[0]])} in that row: means over different tokenizations are not "
                "comparable; give one number per row instead (e.g. each model's log-probability per byte)")
