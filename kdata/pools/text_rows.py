"""The text pool table: kdata's pool schema with the payload in ``text`` and a ``read_error`` column.

Shared by the JSONL reader (``kdata.pools.jsonl``) and the saved-dataset reader (``kdata.pools.text``).
"""

from __future__ import annotations

import json

import pyarrow as pa

from kdata.dataset.schema import POOL_SCHEMA, READ_ERROR

TEXT_FIELDS = ("label", "domain", "source")
TEXT_SCHEMA = POOL_SCHEMA.append(pa.field(READ_ERROR, pa.string()))


def text_table(ids: list[str], texts: list[str | None], *, errors: list[str | None], source: str,
               fields: dict[str, list] | None = None) -> pa.Table:
    """A pool-schema text table plus ``read_error``; ``fields`` holds label/domain/source values."""
    n, fields = len(ids), fields or {}

    def col(name: str, default=None):
        vals = fields.get(name)
        return pa.array(vals if vals is not None else [default] * n, pa.string())

    return pa.table({"sample_id": pa.array(ids, pa.string()), "image": pa.nulls(n, pa.binary()),
                     "text": pa.array(texts, pa.string()), "label": col("label"),
                     "source": col("source", source), "domain": col("domain"),
                     "parent_id": pa.nulls(n, pa.string()), "kind": pa.array(["original"] * n, pa.string()),
                     READ_ERROR: pa.array(errors, pa.string())}, schema=TEXT_SCHEMA)


def str_or_none(v) -> str | None:
    if isinstance(v, str):
        return v if utf8_ok(v) else v.encode("utf-8", "backslashreplace").decode("utf-8")
    return None if v is None else json.dumps(v) if isinstance(v, (list, dict)) else str(v)


def utf8_ok(s: str) -> bool:
    """False for a string UTF-8 cannot hold: a JSON ``\\ud800`` escape without its pair decodes to a lone surrogate."""
    if s.isascii():
        return True
    try:
        s.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False
