"""Text pools: JSONL files, directories of them, and Hugging Face datasets saved with ``save_to_disk``.

Rows follow the pool schema with the payload in ``text`` (plus optional ``label``, ``domain``,
``source``); Parquet files with a ``text`` column are read by the Parquet reader
(``kdata.pools.spec``) and go through the same checks here.

* JSONL: one JSON object per line with a ``text`` string; ``sample_id`` (or ``id``) when given,
  else ``<file>:<line>``. One unit per file, fingerprinted by the file's sha256.
* ``save_to_disk`` directories (a ``Dataset``: ``state.json`` + Arrow stream files; a
  ``DatasetDict``: ``dataset_dict.json`` + one such directory per split): one unit per Arrow file,
  read with pyarrow (no ``datasets`` import); integer ``ClassLabel`` labels become their names.

What cannot be used is kept as a row with the reason in ``read_error`` and quarantined by
scoring (``text_problems``): ``empty_text``, ``undecodable_text: …`` (a line that is not UTF-8 or
not JSON, a ``text`` that is not a string) and ``too_long: N chars > M`` (``--max-text-chars``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from kdata.core.atomic import atomic_path
from kdata.core.digests import sha256_file_memo
from kdata.core.paths import cache_dir
from kdata.core.version import __version__
from kdata.core.errors import KdataError
from kdata.dataset.schema import POOL_SCHEMA, READ_ERROR
from kdata.pools.base import DEFAULT_LIMITS, Pool, PoolLimits, PoolUnit, register_reader
from kdata.pools.files import check_entry

DEFAULT_MAX_TEXT_CHARS = 200_000  # longer texts are quarantined as too_long (--max-text-chars)
TEXT_FIELDS = ("label", "domain", "source")
_TEXT_SCHEMA = POOL_SCHEMA.append(pa.field(READ_ERROR, pa.string()))


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
                     READ_ERROR: pa.array(errors, pa.string())}, schema=_TEXT_SCHEMA)


def _str_or_none(v) -> str | None:
    if isinstance(v, str):
        return v if _utf8_ok(v) else v.encode("utf-8", "backslashreplace").decode("utf-8")
    return None if v is None else json.dumps(v) if isinstance(v, (list, dict)) else str(v)


def _utf8_ok(s: str) -> bool:
    """False for a string UTF-8 cannot hold: a JSON ``\\ud800`` escape without its pair decodes to a lone surrogate."""
    if s.isascii():
        return True
    try:
        s.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


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

    ``fast``: parse with pyarrow's JSON reader (C++, ~10× the per-line parser) when the file is one
    the per-line parser would read without a problem; anything else — a bad line, a blank line, a
    ``text`` that is missing, null or not a string, ids or fields of other JSON types — is read line
    by line, so the table is the same either way (pinned by tests/pools/test_text.py)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise KdataError(f"{path}: cannot read ({exc.strerror})") from None
    data = data.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte-order mark (Windows editors) is not part of line 1
    table = _read_jsonl_arrow(data, name=name, source=Path(path).name) if fast else None
    return table if table is not None else _read_jsonl_lines(data, name=name, source=Path(path).name)


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
        except Exception:  # noqa: BLE001  (any parse problem: the per-line parser says which line)
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
    src = t.column("source") if t.column("source").null_count < n else pa.repeat(pa.scalar(source, pa.string()), n)
    return pa.table({"sample_id": ids, "image": pa.nulls(n, pa.binary()), "text": t.column("text"),
                     "label": t.column("label"), "source": src, "domain": t.column("domain"),
                     "parent_id": pa.nulls(n, pa.string()), "kind": pa.repeat(pa.scalar("original"), n),
                     READ_ERROR: pa.nulls(n, pa.string())}, schema=_TEXT_SCHEMA)


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


def _read_jsonl_lines(data: bytes, *, name: str, source: str) -> pa.Table:
    ids, texts, errors = [], [], []
    fields: dict[str, list] = {k: [] for k in TEXT_FIELDS}
    for lineno, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        obj, err = _parse_line(raw.rstrip(b"\r"), lineno)
        obj = obj or {}
        sid = obj.get("sample_id", obj.get("id"))
        ids.append(f"{name}:{lineno}" if sid is None else _str_or_none(sid))
        text = obj.get("text")
        if err is None and text is not None and not isinstance(text, str):
            err = f"undecodable_text: line {lineno}: 'text' is a JSON {type(text).__name__}, not a string"
        if err is None and "text" not in obj:
            err = f"undecodable_text: line {lineno} has no 'text' field"
        if err is None and isinstance(text, str) and not _utf8_ok(text):
            err = f"undecodable_text: line {lineno}: 'text' holds an unpaired UTF-16 surrogate escape"
        texts.append(text if isinstance(text, str) and err is None else None)
        errors.append(err)
        for k in TEXT_FIELDS:
            fields[k].append(_str_or_none(obj.get(k)))
    if not any(v is not None for v in fields["source"]):
        fields["source"] = None
    return text_table(ids, texts, errors=errors, source=source, fields=fields)


def _labels_of(read):
    def labels() -> set[str]:
        t = read()
        return set(pc.unique(t.column("label")).drop_null().to_pylist())
    return labels


UNIT_CACHE_VERSION = 1  # bump when the parsed table of a unit changes for the same file


def cached_unit_table(path: Path, parse, *, key_parts: list) -> pa.Table:
    """A text unit's pool table, parsed once per file content and kept as an Arrow file in
    ``$KDATA_CACHE/text-units``; every read memory-maps it (zero-copy).

    A unit is read several times per run (scoring, curation's payload, the card) and across reruns.
    Keeping each parsed unit on the Python heap would hold the whole pool in memory; a mapped file
    costs only pages the OS can drop and re-reads without parsing JSON again. The key is the file's
    sha256 (memoised by stat, ``kdata.core.digests``) with kdata's version and ``key_parts`` (the
    unit name, which the default sample ids use). Where the cache cannot be written (read-only), the parsed table is
    returned as it is; an unreadable entry is parsed again and replaced."""
    key = json.dumps([UNIT_CACHE_VERSION, __version__, sha256_file_memo(path), *key_parts], sort_keys=True)
    try:
        entry = cache_dir("text-units") / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.arrow"
    except OSError:
        return parse()
    if entry.is_file():
        try:
            return _mapped(entry)
        except (OSError, pa.ArrowInvalid):
            pass  # torn or foreign file: parse again and replace it
    table = parse()
    try:
        with atomic_path(entry) as tmp:
            with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
                writer.write_table(table)
        return _mapped(entry)
    except (OSError, pa.ArrowInvalid):
        return table


def _mapped(entry: Path) -> pa.Table:
    """The Arrow file as a table over its memory map. The file is closed at once (no descriptor held
    per unit: a pool of thousands of files stays under the open-files limit); the mapping lives as
    long as the table's buffers."""
    with pa.memory_map(str(entry)) as src:
        return pa.ipc.open_file(src).read_all()


def _jsonl_unit(path: Path, root: Path | None) -> PoolUnit:
    name = path.relative_to(root).as_posix() if root else path.name

    def read() -> pa.Table:
        return cached_unit_table(path, lambda: read_jsonl(path, name=name), key_parts=["jsonl", name])

    return PoolUnit(name=name, read=read, fingerprint=lambda: "sha256:" + sha256_file_memo(path), path=str(path),
                    labels=_labels_of(read))


# ------------------------------------------------------------------------------------------------
# Hugging Face ``save_to_disk`` directories

def _is_hf_dataset(p: Path) -> bool:
    return p.is_dir() and ((p / "dataset_dict.json").is_file()
                           or ((p / "state.json").is_file() and (p / "dataset_info.json").is_file()))


def _hf_files(p: Path) -> list[tuple[Path, Path]]:
    """(split directory, Arrow file) pairs of a saved Dataset or DatasetDict, in the saved order."""
    if (p / "dataset_dict.json").is_file():
        try:
            splits = json.loads((p / "dataset_dict.json").read_text())["splits"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise KdataError(f"{p / 'dataset_dict.json'}: cannot read the split list ({exc})") from None
        return [f for s in splits for f in _hf_files(p / s)]
    try:
        files = [d["filename"] for d in json.loads((p / "state.json").read_text())["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise KdataError(f"{p / 'state.json'}: cannot read the data file list ({exc})") from None
    return [(p, p / f) for f in files]


def _class_label_names(split_dir: Path) -> list[str] | None:
    try:
        feats = json.loads((split_dir / "dataset_info.json").read_text()).get("features") or {}
        lab = feats.get("label") or {}
        return list(lab["names"]) if lab.get("_type") == "ClassLabel" else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def read_hf_arrow(path: Path, *, name: str, split_dir: Path) -> pa.Table:
    """One Arrow stream file of a saved dataset → pool table (``text`` required)."""
    try:
        with pa.memory_map(str(path)) as src:
            table = pa.ipc.open_stream(src).read_all()
    except (OSError, pa.ArrowInvalid) as exc:
        raise KdataError(f"{path}: cannot read the saved dataset's Arrow file ({str(exc).splitlines()[0]})") from None
    if "text" not in table.column_names or not pa.types.is_string(table.schema.field("text").type) \
            and not pa.types.is_large_string(table.schema.field("text").type):
        raise KdataError(f"{path}: a text pool needs a string column 'text' (have: {', '.join(table.column_names)})")
    names = _class_label_names(split_dir)
    return (_hf_table_arrow(table, name=name, source=split_dir.name, names=names)
            or _hf_table_rows(table, name=name, source=split_dir.name, names=names))


def _id_column(table: pa.Table):
    return table.column("sample_id") if "sample_id" in table.column_names else \
        table.column("id") if "id" in table.column_names else None


def _hf_table_arrow(table: pa.Table, *, name: str, source: str, names: list[str] | None) -> pa.Table | None:
    """The pool table by Arrow casts alone, or None where they could differ from ``_hf_table_rows``
    (ids or fields of types other than strings and integers, null ids)."""
    def plain(col, ints: bool) -> bool:
        t = col.type
        return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_null(t) \
            or (ints and pa.types.is_integer(t))

    n, sid = table.num_rows, _id_column(table)
    if sid is not None and (not plain(sid, True) or sid.null_count):
        return None
    ids = pa.array([f"{name}:{i}" for i in range(n)], pa.string()) if sid is None else pc.cast(sid, pa.string())
    cols = {}
    for k in TEXT_FIELDS:
        if k not in table.column_names:
            continue
        col = table.column(k)
        if k == "label" and names is not None and pa.types.is_integer(col.type):
            idx = pc.cast(col, pa.int64())
            ok = pc.and_(pc.greater_equal(idx, 0), pc.less(idx, len(names)))
            safe = pc.if_else(ok, idx, 0)
            cols[k] = pc.if_else(ok, pc.take(pa.array(names, pa.string()), safe), pa.scalar(None, pa.string()))
        elif plain(col, True):
            cols[k] = pc.cast(col, pa.string())
        else:
            return None
    nulls = pa.nulls(n, pa.string())
    return pa.table({"sample_id": ids, "image": pa.nulls(n, pa.binary()), "text": pc.cast(table.column("text"), pa.string()),
                     "label": cols.get("label", nulls),
                     "source": cols.get("source", pa.repeat(pa.scalar(source, pa.string()), n)),
                     "domain": cols.get("domain", nulls), "parent_id": nulls,
                     "kind": pa.repeat(pa.scalar("original"), n), READ_ERROR: nulls}, schema=_TEXT_SCHEMA)


def _hf_table_rows(table: pa.Table, *, name: str, source: str, names: list[str] | None) -> pa.Table:
    """The pool table through Python values (any id or field type)."""
    n, sid = table.num_rows, _id_column(table)
    ids = [f"{name}:{i}" for i in range(n)] if sid is None else [_str_or_none(v) for v in sid.to_pylist()]
    fields = {k: [_str_or_none(v) for v in table.column(k).to_pylist()] for k in TEXT_FIELDS if k in table.column_names}
    if names is not None and "label" in table.column_names and pa.types.is_integer(table.schema.field("label").type):
        idx = table.column("label").to_numpy(zero_copy_only=False)
        fields["label"] = [names[int(i)] if i is not None and 0 <= i < len(names) else None for i in idx]
    texts = table.column("text").cast(pa.string()).to_pylist()
    return text_table(ids, texts, errors=[None] * n, source=source, fields=fields)


def _hf_unit(split_dir: Path, path: Path, root: Path) -> PoolUnit:
    name = path.relative_to(root).as_posix()

    def read() -> pa.Table:  # the label names come from dataset_info.json: part of the key
        return cached_unit_table(path, lambda: read_hf_arrow(path, name=name, split_dir=split_dir),
                                 key_parts=["hf", name, split_dir.name, _class_label_names(split_dir)])

    return PoolUnit(name=name, read=read, fingerprint=lambda: "sha256:" + sha256_file_memo(path), path=str(path),
                    labels=_labels_of(read))


# ------------------------------------------------------------------------------------------------

def _is_text_pool(spec: str) -> bool:
    p = Path(spec)
    if p.is_file():
        return p.suffix == ".jsonl"
    if not p.is_dir():
        return False
    return _is_hf_dataset(p) or (any(p.rglob("*.jsonl")) and not any(p.rglob("*.parquet")))


@register_reader(_is_text_pool)
def open_text(spec: str, *, limits: PoolLimits = DEFAULT_LIMITS) -> Pool:
    """A JSONL file, every ``*.jsonl`` under a directory (sorted; hidden skipped), or a saved HF dataset."""
    p = Path(spec)
    if _is_hf_dataset(p):
        units = [_hf_unit(d, f, p) for d, f in _hf_files(p)]
        for u in units:
            if not Path(u.path).is_file():
                raise KdataError(f"{u.path}: listed in the saved dataset but missing")
        layout = "Hugging Face dataset (save_to_disk)"
    elif p.is_file():
        units, layout = [_jsonl_unit(p, None)], "JSONL"
    else:
        files = sorted(f for f in p.rglob("*.jsonl") if not any(x.startswith(".") for x in f.relative_to(p).parts))
        root_real = os.path.realpath(p)
        for f in files:
            reason = check_entry(f, root_real=root_real, limits=limits)
            if reason is not None:
                raise KdataError(f"{f}: {reason}")
        units, layout = [_jsonl_unit(f, p) for f in files], "JSONL directory"
    return Pool(spec=spec, units=units, description=f"{layout} text pool at {spec} ({len(units)} file(s))",
                extra={"layout": layout, "payload": "text"})


def text_problems(table: pa.Table, *, max_chars: int = DEFAULT_MAX_TEXT_CHARS) -> list[str | None]:
    """Per row, why its text cannot be scored (reader error, ``empty_text``, ``too_long``), else None."""
    n = table.num_rows
    errs = table.column(READ_ERROR).to_pylist() if READ_ERROR in table.column_names else [None] * n
    text = table.column("text") if "text" in table.column_names else pa.nulls(n, pa.string())
    text = text.cast(pa.string())
    lengths = np.nan_to_num(np.asarray(pc.utf8_length(text).to_numpy(zero_copy_only=False), dtype=np.float64))
    stripped = pc.utf8_length(pc.utf8_trim_whitespace(pc.fill_null(text, "")))
    empty = np.asarray(pc.equal(stripped, 0).to_numpy(zero_copy_only=False), dtype=bool)
    out: list[str | None] = []
    for i in range(n):
        if errs[i] is not None:
            out.append(errs[i])
        elif empty[i]:
            out.append("empty_text")
        elif lengths[i] > max_chars:
            out.append(f"too_long: {int(lengths[i])} chars > {max_chars}")
        else:
            out.append(None)
    return out


def payload_kind(pool: Pool, *, probe_rows: int = 64) -> str | None:
    """``text`` or ``image``: which payload the pool carries (from the reader, else its first rows)."""
    if pool.extra.get("payload"):
        return pool.extra["payload"]
    for unit in pool.units[:1]:
        try:
            plan = unit.plan()
            t = plan.read_rows(0, min(probe_rows, plan.num_rows))
        except KdataError:
            return None
        has_text = "text" in t.column_names and t.column("text").null_count < t.num_rows
        has_image = "image" in t.column_names and t.column("image").null_count < t.num_rows
        return "text" if has_text and not has_image else "image" if has_image else None
    return None
