"""The soft labels of curated text shards, checked one row group at a time: one line naming the file,
column and row.

A causal-LM row holds ``input_ids`` (L) and, per next-token position, the teacher's top-k token ids
and log-probabilities (P × k) and the leftover mass (P) (docs/text.md). Usable means: no nulls at
any level; P equal across the three soft-label columns; one k for every position of the dataset;
token ids ≥ 0 (and below the student's vocabulary when it is known); log-probabilities finite and
≤ 0 with exp-sum ≤ 1.01 (one softmax, stored in float16); leftover mass finite and in [0, 1]. A text-classifier
row holds class soft labels like an image row and gets the image rows' checks
(``kdata.training.shard_dataset.check_group``). Vectorised over Arrow's flat values: no per-row Python.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from kdata.core.errors import KdataError
from kdata.training.shard_dataset import RowGroup, checked_soft_labels

LM_COLUMNS = ("input_ids", "teacher_topk_ids", "teacher_topk_logprobs", "teacher_rest_mass")
CLASSIFIER_CHECKED = ("teacher_topk_idx", "teacher_topk_prob", "teacher_topk_logit", "label_idx")
LM_SLACK = 0.01  # the top-k of one softmax sums to ≤ 1; float16 log-probs round each term by ≤ 0.05%


def _fail(g: RowGroup, name: str, problem: str, rows: np.ndarray) -> None:
    rows = np.unique(rows)
    if len(rows):
        more = f" and {len(rows) - 1} more in its row group" if len(rows) > 1 else ""
        raise KdataError(f"{g.path}: column '{name}' {problem} (row {g.first + int(rows[0])}{more}): "
                         "not causal-LM text shards kdata can train on")


def _levels(table: pa.Table, name: str, g: RowGroup) -> list[pa.Array]:
    """Column ``name`` level by level, outermost first (the flat values last); a null at any level is
    refused, naming its row."""
    levels = [table.column(name).combine_chunks()]
    while True:
        arr = levels[-1]
        if arr.null_count:
            first = np.flatnonzero(arr.is_null().to_numpy(zero_copy_only=False))[:1]
            _fail(g, name, "holds nulls", _rows(levels, len(levels) - 1, first))
        if not (pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type)):
            return levels
        levels.append(arr.flatten())


def _rows(levels: list[pa.Array], depth: int, index: np.ndarray) -> np.ndarray:
    """The table rows of entries ``index`` of level ``depth``, up through the list offsets (only for
    the few entries a check refuses: no per-value row array is ever built)."""
    index = np.asarray(index, dtype=np.int64)
    for d in range(depth - 1, -1, -1):
        offsets = levels[d].offsets.to_numpy()
        index = np.searchsorted(offsets, index + offsets[0], side="right") - 1
    return index


def _lengths(arr: pa.Array) -> np.ndarray:
    return pc.list_value_length(arr).to_numpy(zero_copy_only=False).astype(np.int64)


def _values(arr: pa.Array) -> np.ndarray:
    return arr.to_numpy(zero_copy_only=False)


def check_lm_group(table: pa.Table, g: RowGroup, *, k: int | None = None, vocab: int | None = None) -> int | None:
    """One row group of causal-LM shards (the ``LM_COLUMNS`` of ``table``) is usable; ``k`` is the top-k
    width of the rows checked before (None: none yet). Returns the width of this group's rows (or ``k``)."""
    ids, topk, logp, rest = (_levels(table, c, g) for c in LM_COLUMNS)
    positions = _lengths(topk[0])
    for name, col in (("teacher_topk_logprobs", logp), ("teacher_rest_mass", rest)):
        _fail(g, name, "holds a different number of positions than 'teacher_topk_ids'",
              np.flatnonzero(_lengths(col[0]) != positions))
    widths, lp_widths = _lengths(topk[1]), _lengths(logp[1])
    whose = "the rows read before"
    if k is None and len(widths):  # the width most positions have: one damaged first row blames itself
        k, whose = int(np.bincount(widths).argmax()), "most rows'"
    _fail(g, "teacher_topk_ids", f"holds top-k lists of another length than {k} ({whose})",
          _rows(topk, 1, np.flatnonzero(widths != k)))
    _fail(g, "teacher_topk_logprobs", "holds lists of another length than 'teacher_topk_ids'",
          _rows(logp, 1, np.flatnonzero(lp_widths != widths)))
    limit = f"[0, {vocab})" if vocab else "[0, …)"
    for name, levels in (("input_ids", ids), ("teacher_topk_ids", topk)):
        v = _values(levels[-1])
        bad = (v < 0) | (v >= vocab) if vocab else v < 0
        _fail(g, name, f"holds token ids outside {limit}" + (" (the student's vocabulary)" if vocab else ""),
              _rows(levels, len(levels) - 1, np.flatnonzero(bad)[:1]))
    lp = _values(logp[-1]).astype(np.float32)
    _fail(g, "teacher_topk_logprobs", "holds non-finite or positive log-probabilities",
          _rows(logp, 2, np.flatnonzero(~(np.isfinite(lp) & (lp <= 0)))[:1]))
    if k and len(lp):  # every position holds k of them (checked above): one row of k per position
        mass = np.exp(lp).reshape(-1, k).sum(1)
        _fail(g, "teacher_topk_logprobs", f"holds top-k probabilities that sum to more than 1 (+{LM_SLACK}): "
              "not one softmax", _rows(logp, 1, np.flatnonzero(mass > 1 + LM_SLACK)))
    r = _values(rest[-1]).astype(np.float32)
    _fail(g, "teacher_rest_mass", "holds values that are not finite or outside [0, 1]",
          _rows(rest, 1, np.flatnonzero(~((r >= 0) & (r <= 1)))[:1]))
    return k


def check_classifier_group(table: pa.Table, g: RowGroup, *, num_classes: int | None) -> None:
    """One row group of text-classifier shards: the class soft-label checks of image rows."""
    if table.num_rows:
        checked_soft_labels(table, g, num_classes=num_classes)


def check_text_shard(path, *, kind: str, num_classes: int | None = None, k: int | None = None) -> int | None:
    """Every row group of one text shard (``kind`` ``causal_lm`` or ``classifier``), its soft-label columns
    only: what ``kdata dedup`` and ``kdata augment`` check before they carry rows into a new dataset.
    ``k``: the top-k width of the dataset's shards checked before; returns the width after this one."""
    pf = pq.ParquetFile(path)
    names = pf.schema_arrow.names
    columns = [c for c in (LM_COLUMNS if kind == "causal_lm" else CLASSIFIER_CHECKED) if c in names]
    first = 0
    for i in range(pf.metadata.num_row_groups):
        table = pf.read_row_group(i, columns=columns)
        g = RowGroup(str(path), i, table.num_rows, first)
        if kind == "causal_lm":
            k = check_lm_group(table, g, k=k)
        else:
            check_classifier_group(table, g, num_classes=num_classes)
        first += table.num_rows
    return k
