"""The shards of a dataset ``kdata dedup`` and ``kdata augment`` derive from, checked as ``kdata train``
checks them.

A dataset whose checksums match its manifest can still hold rows no kdata command would write (NaN
or null soft labels, indices past the classes, a malformed ``kdata`` schema metadata entry), for
instance shards rewritten with their checksums recomputed. A derived dataset would carry them on
under a new, valid manifest. So every row group of an image dataset goes through the trainer's own
per-row checks (``kdata.training.shard_dataset.read_group``: probabilities finite, in [0, 1] and
one softmax, logits finite, top-k indices in [0, C), labels in [-1, C), no nulls, equal-length
lists), and every row group of a text dataset through the text trainer's
(``kdata.training.text_checks``), one row group at a time and without the payloads, before any work:
one line naming the file, column and row.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from kdata.core.errors import KdataError
from kdata.dataset.schema import kdata_metadata, validate_shard
from kdata.dataset.shard_rows import non_null_rows
from kdata.training.shard_dataset import RowGroup, read_group
from kdata.training.text_checks import check_text_shard


def check_source_shards(paths: list[Path], *, class_names=None) -> dict:
    """Every shard present, of the shard schema, with a readable ``kdata`` metadata entry and, where it
    holds images or text, soft labels the trainer accepts over ``len(class_names)`` classes (when known). Returns
    the first shard's ``kdata`` metadata (``{}`` without shards); one ``KdataError`` line otherwise."""
    meta: dict | None = None
    for p in paths:
        if not p.exists():
            raise KdataError(f"{p}: shard listed in the manifest is missing")
        schema = pq.read_schema(p)
        validate_shard(schema, where=str(p))
        shard_meta = kdata_metadata(schema, where=str(p))
        meta = shard_meta if meta is None else meta
    num_classes = len(class_names) if isinstance(class_names, list) and class_names else None
    k = None  # the top-k width of text shards: one for the whole dataset, as the trainer reads them
    for p in paths:
        k = check_soft_labels(p, num_classes=num_classes, k=k)
    return dict(meta or {})


def check_soft_labels(path: Path, *, num_classes: int | None, k: int | None = None) -> int | None:
    """The soft labels of one shard, row group by row group, as ``kdata train`` reads them: image rows by
    the image trainer's checks, text rows by the text trainer's (``kdata.training.text_checks``). A shard
    without payloads (selected from ``--scores`` alone) is not a trainer's to check. ``k``: the causal-LM
    top-k width of the shards checked before; returns it, as this shard leaves it."""
    pf = pq.ParquetFile(path)
    names = pf.schema_arrow.names
    if "image" in names and non_null_rows([path], "image"):
        first = 0
        for i in range(pf.metadata.num_row_groups):
            rows = pf.metadata.row_group(i).num_rows
            read_group(pf, RowGroup(str(path), i, rows, first), num_classes=num_classes, temperature=1.0,
                       images=False)  # the soft labels only: the payloads are not re-read
            first += rows
    elif "text" in names and non_null_rows([path], "text"):
        kind = "causal_lm" if "teacher_topk_ids" in names else "classifier"
        return check_text_shard(path, kind=kind, num_classes=num_classes, k=k)
    return k
