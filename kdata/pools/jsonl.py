"""JSONL text pool files → the text pool table (``kdata.pools.text_rows``).

One JSON object per line with a ``text`` string; ``sample_id`` (or ``id``) when given, else
``<file>:<line>``; blank lines skipped; a line that cannot be used stays a row with its reason.
A file none of whose lines holds a string ``text`` (objects with other keys, JSON arrays or
strings, text of another type) is of the wrong shape as a whole: one line, like a Parquet file
without a ``text`` column.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from kdata.core.errors import KdataError
from kdata.pools.text_rows import (
    TEXT_FIELDS,
    str_or_none,
    text_table,
    text_table_arrow,
    utf8_ok,
)


def _parse_line(raw: bytes, lineno: int) -> tuple[dict | None, str | None]:
    """(object, None) or (None, reason) for one JSONL line."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, f"undecodable_text: line {lineno} is not valid UTF-8 (byte {exc.start})"
    try:
        obj = json.loads(line)
    except ValueError as exc:
        return None, f"undecodable_text: line {lineno} is not JSON ({str(exc).splitlines()[0][:80]})"
    if not isinstance(obj, dict):
        return None, f"undecodable_text: line {lineno} is a JSON {type(obj).__name__}, not an object"
    return obj, None


_BLANK_FIRST, _BLANK_LATER = re.compile(rb"[ \t\r\x0b\x0c]*(?:\n|$)"), re.compile(rb"\n[ \t\r\x0b\x0c]*(?:\n|$)")


def read_jsonl(path: Path, *, name: str, fast: bool = True) -> pa.Table:
    """One JSONL file → pool table (blank lines skipped); bad lines stay rows with their reason.

    ``fast``: parse with pyarrow's JSON reader (about 5× the per-line parser:
    ``benchmarks/text_pool_read.py``) when the file is one the per-line parser would read without a
    problem; anything else — a bad line, a blank line, a ``text`` that is missing, null or not a
    string, ids or fields of other JSON types — is read line by line, so the table is the same
    either way (pinned by tests/pools/test_jsonl.py)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise KdataError(f"{path}: cannot read ({exc.strerror})") from None
    data = data.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte-order mark (Windows editors) is not part of line 1
    table = _read_jsonl_arrow(data, name=name, source=Path(path).name) if fast else None
    return table if table is not None else _read_jsonl_lines(data, name=name, source=Path(path).name, where=str(path))


def _read_jsonl_arrow(data: bytes, *, name: str, source: str) -> pa.Table | None:
    """The pool table from pyarrow's JSON reader, or None where it could differ from the per-line parser."""
    import pyarrow.json as pj

    end = len(data) - 1 if data.endswith(b"\n") else len(data)  # the last line's end (no copy of the bytes)
    if not end or _BLANK_FIRST.match(data, 0, end) or _BLANK_LATER.search(data, 0, end):  # blank lines shift ids
        return None
    if not data.isascii() and not _valid_utf8(data):  # pyarrow's reader does not check: the lines say where
        return None
    has_sid = b'"sample_id"' in data  # absent everywhere: ids come from "id"
    first = data.find(b"\n", 0, end)
    for sid_type, id_type in _id_types(data[:first if first >= 0 else end]):
        schema = pa.schema([("sample_id", sid_type), ("id", id_type), ("text", pa.string()),
                            *[(k, pa.string()) for k in TEXT_FIELDS]])
        try:
            t = pj.read_json(pa.BufferReader(data), parse_options=pj.ParseOptions(
                explicit_schema=schema, unexpected_field_behavior="ignore", newlines_in_values=False))
            break
        except Exception:  # noqa: BLE001, S112  (any parse problem: the per-line parser says which line)
            continue
    else:
        return None
    n = data.count(b"\n", 0, end) + 1
    if t.num_rows != n or t.column("text").null_count:  # two objects on a line; text missing or null
        return None
    sid = t.column("sample_id")
    if has_sid and sid.null_count:  # a null "sample_id" and an absent one read alike: let the lines decide
        return None
    ids = pc.cast(sid if has_sid else t.column("id"), pa.string())
    if ids.null_count:
        ids = pc.if_else(pc.is_null(ids), pa.array([f"{name}:{i}" for i in range(1, n + 1)], pa.string()), ids)
    return text_table_arrow(ids, t.column("text"), source=source, label=t.column("label"), domain=t.column("domain"),
                            source_col=t.column("source") if t.column("source").null_count < n else None)


def _valid_utf8(data: bytes) -> bool:
    """UTF-8 validity of the whole file, checked by Arrow's cast (a quarter of ``bytes.decode``'s time)."""
    arr = pa.Array.from_buffers(pa.large_binary(), 1, [None, pa.py_buffer(np.array([0, len(data)], np.int64)),
                                                        pa.py_buffer(data)])
    try:
        arr.cast(pa.large_string())
        return True
    except pa.ArrowInvalid:
        return False


def _id_types(first_line: bytes) -> list[tuple[pa.DataType, pa.DataType]]:
    """(sample_id, id) Arrow types to try, the first line's own first (a failed try parses the file)."""
    both = [(pa.string(), pa.string()), (pa.string(), pa.int64()), (pa.int64(), pa.int64())]
    try:
        obj = json.loads(first_line)
    except ValueError:
        return both
    if not isinstance(obj, dict):
        return both
    typ = [pa.int64() if isinstance(obj.get(k), int) and not isinstance(obj.get(k), bool) else pa.string()
           for k in ("sample_id", "id")]
    guess = (typ[0], typ[1])
    return [guess] + [t for t in both if t != guess]


def _read_jsonl_lines(data: bytes, *, name: str, source: str, where: str | None = None) -> pa.Table:
    ids, texts, errors = [], [], []
    fields: dict[str, list] = {k: [] for k in TEXT_FIELDS}
    first: tuple[dict | None, str | None] | None = None  # the first line: what the file looks like
    any_text = False  # some line holds a string 'text' (else the whole file is of the wrong shape)
    for lineno, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        obj, err = _parse_line(raw.rstrip(b"\r"), lineno)
        first = first or (obj, err)
        any_text = any_text or isinstance((obj or {}).get("text"), str)
        obj = obj or {}
        sid = obj.get("sample_id", obj.get("id"))
        ids.append(f"{name}:{lineno}" if sid is None else str_or_none(sid))
        text = obj.get("text")
        if err is None and text is not None and not isinstance(text, str):
            err = f"undecodable_text: line {lineno}: 'text' is a JSON {type(text).__name__}, not a string"
        if err is None and "text" not in obj:
            err = f"undecodable_text: line {lineno} has no 'text' field"
        if err is None and isinstance(text, str) and not utf8_ok(text):
            err = f"undecodable_text: line {lineno}: 'text' holds an unpaired UTF-16 surrogate escape"
        texts.append(text if isinstance(text, str) and err is None else None)
        errors.append(err)
        for k in TEXT_FIELDS:
            fields[k].append(str_or_none(obj.get(k)))
    if first is not None and not any_text:
        raise KdataError(f"{where or source}: no line holds a string 'text' field ({_shape(*first)}); "
                         "a JSONL text pool needs one JSON object per line with a 'text' string")
    if not any(v is not None for v in fields["source"]):
        fields["source"] = None
    return text_table(ids, texts, errors=errors, source=source, fields=fields)


def _shape(obj: dict | None, err: str | None) -> str:
    """What the first non-blank line holds, for the message refusing a file of the wrong shape."""
    if obj is None:
        return (err or "").removeprefix("undecodable_text: ")  # "line 1 is a JSON list, not an object", …
    if "text" in obj:
        kind = "null" if obj["text"] is None else f"a JSON {type(obj['text']).__name__}"
        return f"first line's 'text' is {kind}"
    keys = [str(k) for k in obj]
    more = f", … ({len(keys)} in all)" if len(keys) > 8 else ""
    return f"first line's keys: {', '.join(keys[:8]) + more if keys else 'none'}"
