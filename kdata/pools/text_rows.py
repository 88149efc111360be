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
    fields = fields or {}

    def col(name: str):
        return None if fields.get(name) is None else pa.array(fields[name], pa.string())

    return text_table_arrow(pa.array(ids, pa.string()), pa.array(texts, pa.string()), source=source,
                            label=col("label"), domain=col("domain"), source_col=col("source"),
                            errors=pa.array(errors, pa.string()))


def text_table_arrow(ids, texts, *, source: str, label=None, domain=None, source_col=None, errors=None) -> pa.Table:
    """``text_table`` from Arrow string columns (arrays or chunked): a field left None is all null,
    ``source_col`` None is ``source`` on every row, ``errors`` None is no reader error."""
    n = len(ids)
    nulls = pa.nulls(n, pa.string())
    return pa.table({"sample_id": ids, "image": pa.nulls(n, pa.binary()), "text": texts,
                     "label": nulls if label is None else label,
                     "source": pa.repeat(pa.scalar(source, pa.string()), n) if source_col is None else source_col,
                     "domain": nulls if domain is None else domain, "parent_id": nulls,
                     "kind": pa.repeat(pa.scalar("original"), n), READ_ERROR: nulls if errors is None else errors},
                    schema=TEXT_SCHEMA)


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
