"""JSONL text pool files → the text pool table (``kdata.pools.text_rows``).

One JSON object per line with a ``text`` string; ``sample_id`` (or ``id``) when given, else
``<file>:<line>``; blank lines skipped; a line that cannot be used stays a row with its reason.
A file none of whose lines holds a string ``text`` (objects with other keys, JSON arrays or
strings, text of another type) is of the wrong shape as a whole: one line, like a Parquet file
without a ``text`` column. ``parse_jsonl`` parses any stretch of whole lines (a byte range of a large
file, ``kdata.pools.jsonl_split``) with the line number it starts after, and says what the file-wide
rules above need from it (``JsonlFacts``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from kdata.core.errors import KdataError
from kdata.pools.json_depth import MAX_DEPTH, may_nest_deeper, too_deep
from kdata.pools.text_rows import (
    TEXT_FIELDS,
    str_or_none,
    text_table,
    text_table_arrow,
    utf8_ok,
)

JSONL_READER = "jsonl-reader-v3"  # in unit fingerprints: bump when a file is read differently (scores are re-made)
#                                   v2: the line number of a read error in trailing brackets
#                                   v3: lines nested past MAX_DEPTH, ids that are lists, objects, booleans or ""


def _parse_line(raw: bytes, lineno: int) -> tuple[dict | None, str | None]:
    """(object, None) or (None, reason) for one JSONL line. A reason is ``undecodable_text: <what>
    (line N…)``: the position in the trailing brackets, so equal problems group as one kind
    (``kdata.dataset.decisions.quarantine_kind``) and the row's error still says where."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, f"undecodable_text: not valid UTF-8 (line {lineno}, byte {exc.start})"
    if too_deep(raw):  # [[[[… 100,000 deep: Python's parser would recurse once per level
        return None, f"undecodable_text: JSON nested more than {MAX_DEPTH} levels deep (line {lineno})"
    try:
        obj = json.loads(line)
    except ValueError as exc:
        return None, f"undecodable_text: not JSON (line {lineno}: {str(exc).splitlines()[0][:80]})"
    except RecursionError:  # within MAX_DEPTH, but the caller's stack was already deep
        return None, f"undecodable_text: JSON nested too deeply to read (line {lineno})"
    if not isinstance(obj, dict):
        return None, f"undecodable_text: a JSON {type(obj).__name__}, not an object (line {lineno})"
    return obj, None


_BLANK_FIRST, _BLANK_LATER = re.compile(rb"[ \t\r\x0b\x0c]*(?:\n|$)"), re.compile(rb"\n[ \t\r\x0b\x0c]*(?:\n|$)")


@dataclass(frozen=True)
class JsonlFacts:
    """What parsed lines say about their file as a whole: the first non-blank line's (object, reason)
    (None: no such line; left None by the fast reader, which takes only lines that all hold text),
    whether some line holds a string ``text`` (a file with none is refused) and whether some line
    holds a ``source`` (else every row's source is the file name)."""

    first: tuple[dict | None, str | None] | None
    any_text: bool
    any_source: bool


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
    table, facts = parse_jsonl(data, name=name, source=Path(path).name, fast=fast)
    if facts.first is not None and not facts.any_text:
        raise wrong_shape(str(path), facts.first)
    return table


def parse_jsonl(data: bytes, *, name: str, source: str, line0: int = 0,
                fast: bool = True) -> tuple[pa.Table, JsonlFacts]:
    """Whole JSONL lines (``data`` starts a line; its first is line ``line0 + 1`` of the file) → their
    pool table and ``JsonlFacts``. The table's ``source`` column falls back to ``source`` when no line
    holds one; refusing a file without text is the caller's (``wrong_shape``): it knows the file."""
    got = _arrow_table(data, name=name, source=source, line0=line0) if fast else None
    if got is not None:  # every line holds a string text
        return got[0], JsonlFacts(None, True, got[1])
    return _read_jsonl_lines(data, name=name, source=source, line0=line0)


def wrong_shape(where: str, first: tuple[dict | None, str | None]) -> KdataError:
    """The one-line refusal of a JSONL file none of whose lines holds a string ``text``."""
    return KdataError(f"{where}: no line holds a string 'text' field ({_shape(*first)}); "
                      "a JSONL text pool needs one JSON object per line with a 'text' string")


def _read_jsonl_arrow(data: bytes, *, name: str, source: str, line0: int = 0) -> pa.Table | None:
    """The pool table from pyarrow's JSON reader, or None where it could differ from the per-line parser."""
    got = _arrow_table(data, name=name, source=source, line0=line0)
    return None if got is None else got[0]


def _arrow_table(data: bytes, *, name: str, source: str, line0: int) -> tuple[pa.Table, bool] | None:
    """(``_read_jsonl_arrow``'s table, whether some line holds a ``source``), or None."""
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
    if may_nest_deeper(data, objects=n):  # pyarrow has no depth limit; the per-line parser has MAX_DEPTH
        return None
    sid = t.column("sample_id")
    if has_sid and sid.null_count:  # a null "sample_id" and an absent one read alike: let the lines decide
        return None
    ids = pc.cast(sid if has_sid else t.column("id"), pa.string())
    if pc.any(pc.equal(ids, "")).as_py():  # an empty id: the lines quarantine it (``id_problem``)
        return None
    if ids.null_count:
        ids = pc.if_else(pc.is_null(ids), pa.array([f"{name}:{i}" for i in range(line0 + 1, line0 + n + 1)],
                                                   pa.string()), ids)
    has_source = t.column("source").null_count < n
    return text_table_arrow(ids, t.column("text"), source=source, label=t.column("label"), domain=t.column("domain"),
                            source_col=t.column("source") if has_source else None), has_source


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
    except (ValueError, RecursionError):
        return both
    if not isinstance(obj, dict):
        return both
    typ = [pa.int64() if isinstance(obj.get(k), int) and not isinstance(obj.get(k), bool) else pa.string()
           for k in ("sample_id", "id")]
    guess = (typ[0], typ[1])
    return [guess] + [t for t in both if t != guess]


def _read_jsonl_lines(data: bytes, *, name: str, source: str, line0: int = 0) -> tuple[pa.Table, JsonlFacts]:
    ids, texts, errors = [], [], []
    fields: dict[str, list] = {k: [] for k in TEXT_FIELDS}
    first: tuple[dict | None, str | None] | None = None  # the first line: what the file looks like
    any_text = False  # some line holds a string 'text' (else the whole file is of the wrong shape)
    for lineno, raw in enumerate(data.split(b"\n"), start=line0 + 1):
        if not raw.strip():
            continue
        obj, err = _parse_line(raw.rstrip(b"\r"), lineno)
        first = first or (obj, err)
        any_text = any_text or isinstance((obj or {}).get("text"), str)
        obj = obj or {}
        sid = obj.get("sample_id", obj.get("id"))
        if err is None and sid is not None:
            err = id_problem(obj, lineno)
        ids.append(f"{name}:{lineno}" if sid is None or err is not None else str_or_none(sid))
        text = obj.get("text")
        if err is None and text is not None and not isinstance(text, str):
            err = f"undecodable_text: 'text' is a JSON {type(text).__name__}, not a string (line {lineno})"
        if err is None and "text" not in obj:
            err = f"undecodable_text: no 'text' field (line {lineno})"
        if err is None and isinstance(text, str) and not utf8_ok(text):
            err = f"undecodable_text: 'text' holds an unpaired UTF-16 surrogate escape (line {lineno})"
        texts.append(text if isinstance(text, str) and err is None else None)
        errors.append(err)
        for k in TEXT_FIELDS:
            fields[k].append(str_or_none(obj.get(k)))
    any_source = any(v is not None for v in fields["source"])
    if not any_source:
        fields["source"] = None
    return text_table(ids, texts, errors=errors, source=source, fields=fields), JsonlFacts(first, any_text, any_source)


def id_problem(obj: dict, lineno: int) -> str | None:
    """Why a line's id (``sample_id``, else ``id``) cannot name its sample, else None: a JSON list,
    object or boolean (it became the id ``"[0]"``), or an empty string. Its row is quarantined under
    ``<file>:<line>``, like a line whose ``text`` is of the wrong type."""
    key = "sample_id" if obj.get("sample_id") is not None else "id"
    sid = obj[key]
    if isinstance(sid, (list, dict, bool)):
        kind = {list: "list", dict: "object", bool: "boolean"}[type(sid)]
        return f"undecodable_text: '{key}' is a JSON {kind}, not a string or number (line {lineno})"
    if sid == "":
        return f"undecodable_text: '{key}' is an empty string (line {lineno})"
    return None


def _shape(obj: dict | None, err: str | None) -> str:
    """What the first non-blank line holds, for the message refusing a file of the wrong shape."""
    if obj is None:  # "undecodable_text: not valid UTF-8 (line 1, byte 0)" → "line 1: not valid UTF-8 (byte 0)"
        m = re.fullmatch(r"undecodable_text: (.*) \(line (\d+)(?:(?:, |: )(.*))?\)", err or "", re.DOTALL)
        return f"line {m[2]}: {m[1]}" + (f" ({m[3]})" if m[3] else "") if m else (err or "")
    if "text" in obj:
        kind = "null" if obj["text"] is None else f"a JSON {type(obj['text']).__name__}"
        return f"first line's 'text' is {kind}"
    keys = [str(k) for k in obj]
    more = f", … ({len(keys)} in all)" if len(keys) > 8 else ""
    return f"first line's keys: {', '.join(keys[:8]) + more if keys else 'none'}"
