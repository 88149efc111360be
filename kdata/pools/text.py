"""Text pools: JSONL files, directories of them, and Hugging Face datasets saved with ``save_to_disk``.

Rows follow the pool schema with the payload in ``text`` (plus optional ``label``, ``domain``,
``source``); Parquet files with a ``text`` column are read by the Parquet reader
(``kdata.pools.spec``) and go through the same checks here.

* JSONL (``*.jsonl``, ``*.ndjson``): one JSON object per line with a ``text`` string; ``sample_id``
  (or ``id``) when given, else ``<file>:<line>`` (``kdata.pools.jsonl``). One unit per file,
  fingerprinted by the file's sha256 and the reader's version (``JSONL_READER``); a file over
  ``kdata.pools.jsonl_split.SPLIT_BYTES`` is one unit per byte range (``<file>#bytes=<start>-<stop>``),
  each read alone, with the whole file's rows.
  A directory of them that also holds Parquet files, or files that look like data but would not
  be read (``*.json``, compressed: ``*.gz``, ``*.bz2``, ``*.xz``, ``*.zst``, ``*.zip``), is one
  line naming one; so is such a file given as the pool.
* ``save_to_disk`` directories (a ``Dataset``: ``state.json`` + Arrow stream files): one unit per
  Arrow file, read with pyarrow (no ``datasets`` import); integer ``ClassLabel`` labels become their
  names. A ``DatasetDict`` root (``dataset_dict.json`` + one such directory per split) is refused in
  one line naming its splits: read whole, it would merge train and test. ``DIR/train`` is read.

Each unit is parsed once per content and memory-mapped after (``kdata.pools.unit_cache``).

What cannot be used is kept as a row with the reason in ``read_error`` and quarantined by
scoring (``text_problems``): ``empty_text``, ``undecodable_text: …`` (a line that is not UTF-8 or
not JSON, a ``text`` that is not a string) and ``too_long: over M chars (N chars)``
(``--max-text-chars``). What differs per row (a line number, a length) is in the trailing brackets,
so equal problems count as one kind (``kdata.dataset.decisions.quarantine_kind``).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from kdata.core.digests import sha256_file_memo
from kdata.core.errors import KdataError
from kdata.dataset.manifest import MANIFEST
from kdata.dataset.schema import READ_ERROR
from kdata.pools.base import DEFAULT_LIMITS, Pool, PoolLimits, PoolUnit, register_reader
from kdata.pools.class_labels import class_label_names, class_label_strings
from kdata.pools.hf_label_meta import read_dataset_info_features
from kdata.pools.files import check_entry, escaped, is_inside
from kdata.pools.jsonl import JSONL_READER, read_jsonl
from kdata.pools.jsonl_split import jsonl_cuts, jsonl_parts, part_fingerprint, read_jsonl_part
from kdata.pools.text_rows import (
    TEXT_FIELDS,
    str_or_none,
    text_table,
    text_table_arrow,
)
from kdata.pools.unit_cache import cached_unit_table

__all__ = ["DEFAULT_MAX_TEXT_CHARS", "TEXT_FIELDS", "check_text_units", "open_text", "payload_kind", "read_hf_arrow",
           "read_jsonl", "text_problems", "text_table"]

DEFAULT_MAX_TEXT_CHARS = 200_000  # longer texts are quarantined as too_long (--max-text-chars)
TEXT_LAYOUTS = ("Hugging Face dataset (save_to_disk)", "JSONL", "JSONL directory")  # pool.extra["layout"] of open_text


def _labels_of(read):
    def labels() -> set[str]:
        t = read()
        return set(pc.unique(t.column("label")).drop_null().to_pylist())
    return labels


def _jsonl_units(path: Path, root: Path | None) -> list[PoolUnit]:
    """One unit for a JSONL file, or one per byte range of a large one (``kdata.pools.jsonl_split``)."""
    name = path.relative_to(root).as_posix() if root else path.name
    cuts = jsonl_cuts(path)
    if len(cuts) == 1:
        return [_jsonl_unit(path, name)]
    return [_jsonl_part_unit(path, name, cuts, k) for k in range(len(cuts))]


def _jsonl_unit(path: Path, name: str) -> PoolUnit:
    def read() -> pa.Table:
        return cached_unit_table(path, lambda: read_jsonl(path, name=name), key_parts=["jsonl", name, JSONL_READER])

    return PoolUnit(name=name, read=read, fingerprint=lambda: f"sha256:{sha256_file_memo(path)}:{JSONL_READER}",
                    path=str(path), labels=_labels_of(read))


def _jsonl_part_unit(path: Path, name: str, cuts: list[tuple[int, int]], k: int) -> PoolUnit:
    def fingerprint() -> str:
        return part_fingerprint(name, jsonl_parts(path, cuts), k)

    def read() -> pa.Table:  # the fingerprint covers the range's bytes and what else decides its rows
        return cached_unit_table(path, lambda: read_jsonl_part(path, name=name, parts=jsonl_parts(path, cuts), k=k),
                                 key_parts=["jsonl-range", name], digest=fingerprint())

    start, stop = cuts[k]
    return PoolUnit(name=f"{name}#bytes={start}-{stop}", read=read, fingerprint=fingerprint, path=str(path),
                    labels=_labels_of(read))


# ------------------------------------------------------------------------------------------------
# Hugging Face ``save_to_disk`` directories

def _is_hf_dataset(p: Path) -> bool:
    return p.is_dir() and ((p / "dataset_dict.json").is_file()
                           or ((p / "state.json").is_file() and (p / "dataset_info.json").is_file()))


def _hf_files(p: Path, *, limits: PoolLimits = DEFAULT_LIMITS) -> list[tuple[Path, Path]]:
    """(directory, Arrow file) pairs of a saved Dataset, in the saved order. Names in the JSON files are
    checked (``_hf_split_dir``, ``_hf_data_file``): a hostile dataset must not make kdata read files
    outside the pool. A DatasetDict root is refused once its split names are checked
    (``_dataset_dict_refusal``): one split's directory is a saved Dataset, read as such."""
    root_real = os.path.realpath(p)
    index = p / "dataset_dict.json"
    if not index.is_file():
        return _hf_split_files(p, root_real=root_real, limits=limits)
    try:
        splits = json.loads(index.read_text())["splits"]
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as exc:
        raise KdataError(f"{index}: cannot read the split list ({exc})") from None
    if not isinstance(splits, list):
        raise KdataError(f"{index}: 'splits' must be a list of split names, not {type(splits).__name__}")
    dirs = [_hf_split_dir(p, s, index=index, root_real=root_real, limits=limits) for s in splits]
    raise KdataError(_dataset_dict_refusal(p, [d.name for d in dirs]))


def _dataset_dict_refusal(p: Path, splits: list[str]) -> str:
    """The one line refusing a saved ``DatasetDict`` root: reading it whole would merge its splits (test
    rows into a pool, train rows into a held-out set), so one split's directory is asked for."""
    if not splits:
        return f"{p}: a DatasetDict with no splits: give one split's directory (a saved Dataset)"
    shown = [s if s.isprintable() else repr(s) for s in splits]  # still one line
    return f"{p}: a DatasetDict with splits {', '.join(shown)}: give one split's directory, e.g. {p / shown[0]}"


def _plain_name(name, *, single: bool) -> bool:
    """A relative name with no ``.``/``..``/empty part (one part only when ``single``)."""
    if not isinstance(name, str) or not name or "\0" in name or os.path.isabs(name):
        return False
    parts = name.split("/")
    return all(x not in ("", ".", "..") for x in parts) and (len(parts) == 1 or not single)


def _hf_split_dir(p: Path, split, *, index: Path, root_real: str, limits: PoolLimits) -> Path:
    """The directory of one split named in ``dataset_dict.json``: a single path component that is an
    existing subdirectory of the pool (inside it unless ``--follow-symlinks``). Not recursed into."""
    where = f"{index}: split {split!r}"
    if not _plain_name(split, single=True):
        raise KdataError(f"{where} is not a plain directory name (one path component, no '.' or '..')")
    d = p / split
    if not d.is_dir():
        raise KdataError(f"{where}: no such subdirectory {d}")
    real = os.path.realpath(d)
    if real == root_real:
        raise KdataError(f"{where}: leads back to the pool directory itself")
    if not limits.follow_symlinks and not is_inside(real, root_real):
        raise KdataError(f"{where}: symlink to {escaped(real)}, outside the pool (--follow-symlinks reads it)")
    return d


def _hf_split_files(d: Path, *, root_real: str, limits: PoolLimits) -> list[tuple[Path, Path]]:
    """(``d``, Arrow file) pairs listed in ``d/state.json``, each checked by ``_hf_data_file``."""
    state = d / "state.json"
    try:
        entries = json.loads(state.read_text())["_data_files"]
        names = [e["filename"] for e in entries]
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as exc:
        raise KdataError(f"{state}: cannot read the data file list ({exc})") from None
    return [(d, _hf_data_file(d, f, state=state, root_real=root_real, limits=limits)) for f in names]


def _hf_data_file(d: Path, name, *, state: Path, root_real: str, limits: PoolLimits) -> Path:
    """``d / name`` for a plain relative ``name`` that stays inside the pool (through symlinks too,
    unless ``--follow-symlinks``) and is a regular file, checked like other whole pool files."""
    where = f"{state}: data file {name!r}"
    if not _plain_name(name, single=False):
        raise KdataError(f"{where} is not a plain relative name inside the dataset directory (no absolute "
                         "path, no '.' or '..')")
    f = d / name
    real = os.path.realpath(f)
    if not limits.follow_symlinks and not is_inside(real, root_real):
        raise KdataError(f"{where}: symlink to {escaped(real)}, outside the pool (--follow-symlinks reads it)")
    if not os.path.lexists(f):
        raise KdataError(f"{where}: listed in the saved dataset but missing ({f})")
    reason = check_entry(f, root_real=root_real, limits=limits)
    if reason is not None:
        raise KdataError(f"{where}: {reason}")
    return f


def _class_label_names(split_dir: Path) -> list[str] | None:
    features = read_dataset_info_features(split_dir / "dataset_info.json")  # malformed: one line, never a guess
    return None if features is None else class_label_names(features)


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
    def plain(col) -> bool:
        t = col.type
        return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_null(t) or pa.types.is_integer(t)

    n, sid = table.num_rows, _id_column(table)
    if sid is not None and (not plain(sid) or sid.null_count):
        return None
    ids = pa.array([f"{name}:{i}" for i in range(n)], pa.string()) if sid is None else pc.cast(sid, pa.string())
    cols = {}
    for k in TEXT_FIELDS:
        if k not in table.column_names:
            continue
        col = table.column(k)
        if k == "label" and names is not None and pa.types.is_integer(col.type):
            cols[k] = class_label_strings(col, names)
        elif plain(col):
            cols[k] = pc.cast(col, pa.string())
        else:
            return None
    return text_table_arrow(ids, pc.cast(table.column("text"), pa.string()), source=source, label=cols.get("label"),
                            domain=cols.get("domain"), source_col=cols.get("source"))


def _hf_table_rows(table: pa.Table, *, name: str, source: str, names: list[str] | None) -> pa.Table:
    """The pool table through Python values (any id or field type)."""
    n, sid = table.num_rows, _id_column(table)
    ids = [f"{name}:{i}" for i in range(n)] if sid is None else [str_or_none(v) for v in sid.to_pylist()]
    fields = {k: [str_or_none(v) for v in table.column(k).to_pylist()] for k in TEXT_FIELDS if k in table.column_names}
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

JSONL_SUFFIXES = (".jsonl", ".ndjson")  # read as JSONL (one JSON object per line)
_COMPRESSED = r"\.(gz|bz2|xz|zst|zstd|zip)$"
_UNREAD = re.compile(r"\.json$|" + _COMPRESSED, re.IGNORECASE)  # look like data, not read: refused
_JSONL_LIKE = re.compile(r"\.(jsonl|ndjson)$|\.(jsonl|ndjson)" + _COMPRESSED, re.IGNORECASE)


def _visible_files(p: Path) -> list[Path]:
    """Every entry under ``p`` (sorted) with no hidden part in its path below ``p``."""
    return sorted(f for f in p.rglob("*") if not any(x.startswith(".") for x in f.relative_to(p).parts))


def _is_text_pool(spec: str) -> bool:
    """A JSONL file (a ``.json`` or compressed one too: refused when opened), a saved HF dataset, or a
    directory holding JSONL files, compressed or not (refused when opened if it also holds Parquet
    files or files it would not read). A kdata dataset directory (``manifest.json`` + Parquet) is not."""
    p = Path(spec)
    if p.is_file():
        return bool(_JSONL_LIKE.search(p.name) or _UNREAD.search(p.name) and ".json" in p.name.lower())
    if not p.is_dir():
        return False
    if _is_hf_dataset(p):
        return True
    files = _visible_files(p)
    if (p / MANIFEST).is_file() and any(f.suffix == ".parquet" for f in files):
        return False  # a kdata dataset directory: the Parquet reader reads the shards its manifest lists
    return any(_JSONL_LIKE.search(f.name) for f in files)


def _unread_refusal(f: Path, pool: Path | None) -> str:
    """The one-line refusal of a file that looks like data but is not read as JSONL."""
    where = f" in the JSONL text pool {pool}" if pool else ""
    if f.suffix.lower() == ".json":
        return (f"{f}: a .json file{where} is not read (text pools read JSONL: *.jsonl or *.ndjson); rename it "
                "to .jsonl if it holds one JSON object per line, else move it out")
    return (f"{f}: a compressed file{where} is not read (text pools read uncompressed *.jsonl or *.ndjson); "
            "decompress it (e.g. gunzip) or move it out")


def _jsonl_dir_files(p: Path, *, limits: PoolLimits) -> list[Path]:
    """The JSONL files of a pool directory, checked: Parquet files beside them, or files that look like
    data but would not be read (``*.json``, compressed), are one line naming one (module doc)."""
    entries = _visible_files(p)
    jsonl = next((f for f in entries if _JSONL_LIKE.search(f.name)), None)
    parquet = next((f for f in entries if f.suffix == ".parquet"), None)
    if parquet is not None and jsonl is not None:
        raise KdataError(f"{p}: holds JSONL files ({jsonl}) and Parquet files ({parquet}), so it is neither a "
                         "JSONL text pool nor a Parquet pool; move one kind out, or point --pool at one kind")
    unread = next((f for f in entries if _UNREAD.search(f.name) and f.is_file()), None)
    if unread is not None:
        raise KdataError(_unread_refusal(unread, p))
    files = [f for f in entries if f.suffix.lower() in JSONL_SUFFIXES]
    root_real = os.path.realpath(p)
    for f in files:
        reason = check_entry(f, root_real=root_real, limits=limits)
        if reason is not None:
            raise KdataError(f"{f}: {reason}")
    return files


@register_reader(_is_text_pool)
def open_text(spec: str, *, limits: PoolLimits = DEFAULT_LIMITS) -> Pool:
    """A JSONL file, every ``*.jsonl`` / ``*.ndjson`` under a directory (sorted; hidden skipped), or a
    saved HF dataset."""
    p = Path(spec)
    if _is_hf_dataset(p):
        units = [_hf_unit(d, f, p) for d, f in _hf_files(p, limits=limits)]
        layout = TEXT_LAYOUTS[0]
    elif p.is_file():
        if p.suffix.lower() not in JSONL_SUFFIXES:
            raise KdataError(_unread_refusal(p, None))
        units, layout = _jsonl_units(p, None), TEXT_LAYOUTS[1]
    else:
        units, layout = [u for f in _jsonl_dir_files(p, limits=limits) for u in _jsonl_units(f, p)], TEXT_LAYOUTS[2]
    files = len({u.path for u in units})  # a large JSONL file is several units
    return Pool(spec=spec, units=units, description=f"{layout} text pool at {spec} ({files} file(s))",
                extra={"layout": layout, "payload": "text"})


def check_text_units(pool: Pool) -> None:
    """Read each unit of a JSONL or saved-dataset pool before any scoring, so a file of the wrong
    shape (no line with a string ``text``; a saved dataset without a ``text`` column) is one line up
    front rather than mid-run or, on a rerun, hidden behind cached scores. Parsed units are cached
    (``kdata.pools.unit_cache``): scoring's reads map them instead of parsing again. Parquet pools
    are checked from their footers when opened; other pools are left alone."""
    if pool.extra.get("layout") not in TEXT_LAYOUTS:
        return
    for unit in pool.units:
        unit.read()


def text_problems(table: pa.Table, *, max_chars: int = DEFAULT_MAX_TEXT_CHARS) -> list[str | None]:
    """Per row, why its text cannot be scored (reader error, ``empty_text``, ``too_long``), else None."""
    n = table.num_rows
    text = table.column("text") if "text" in table.column_names else pa.nulls(n, pa.string())
    text = text.cast(pa.string())
    lengths = np.nan_to_num(np.asarray(pc.utf8_length(text).to_numpy(zero_copy_only=False), dtype=np.float64))
    stripped = pc.utf8_length(pc.utf8_trim_whitespace(pc.fill_null(text, "")))
    empty = np.asarray(pc.equal(stripped, 0).to_numpy(zero_copy_only=False), dtype=bool)
    out = np.full(n, None, dtype=object)
    long = lengths > max_chars
    out[long] = [f"too_long: over {max_chars} chars ({int(v)} chars)" for v in lengths[long]]
    out[empty] = "empty_text"
    if READ_ERROR in table.column_names:  # a reader's error wins
        has = np.asarray(table.column(READ_ERROR).is_valid().to_numpy(zero_copy_only=False), dtype=bool)
        out[has] = np.asarray(table.column(READ_ERROR).filter(pa.array(has)).to_pylist(), dtype=object)
    return out.tolist()


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
