"""Hugging Face ``ClassLabel`` ids as their names, read the same way by the saved-dataset reader
(``kdata.pools.text``: ``dataset_info.json``) and the Parquet reader (``kdata.pools.parquet_shapes``:
the file's ``huggingface`` schema metadata): both hold a ``features`` mapping in which
``{"label": {"_type": "ClassLabel", "names": [...]}}`` names the label ids."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc


def class_label_names(features) -> list[str] | None:
    """The names of the ``label`` ClassLabel of a ``features`` mapping (None: no such feature, or malformed)."""
    try:
        lab = features.get("label") or {}
        if lab.get("_type") != "ClassLabel":
            return None
        names = list(lab["names"])
    except (KeyError, TypeError, AttributeError):
        return None
    return names if all(isinstance(n, str) for n in names) else None


def class_label_strings(ids, names: list[str]):
    """Integer label ``ids`` (an array or chunked array) as their ``names``; null for a null id or one
    outside the names (``datasets`` writes -1 for "no label")."""
    idx = pc.cast(ids, pa.int64(), safe=False)  # a uint64 past int64: negative, so outside the names
    ok = pc.and_(pc.greater_equal(idx, 0), pc.less(idx, len(names)))
    safe = pc.if_else(ok, idx, 0)  # a valid position even with no names (the extra "")
    return pc.if_else(ok, pc.take(pa.array([*names, ""], pa.string()), safe), pa.scalar(None, pa.string()))
