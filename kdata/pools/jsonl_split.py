"""Large JSONL files as several pool units: byte ranges cut at line boundaries.

A JSONL file read as one unit is held whole while it is parsed (bytes, parser buffers, the table):
about 3× the file, so a 20 GB export would need some 50–60 GB of memory. A file over
``SPLIT_BYTES`` is cut into ranges of at least that many bytes, each ending just after a newline;
each range unit seeks to its bytes and reads only them. A file that yields one range (under the
constant, or one long line) stays today's single unit: same name, fingerprint, ids and cache entry.

A range unit's table is exactly its rows of the whole-file table (``kdata.pools.jsonl``): default
ids ``<file>:<line>`` use the file's line numbers (the newlines before the range, counted once per
file in ``jsonl_parts``); the byte-order mark is dropped at the file's start only; blank and bad
lines are what they are in the whole file. The two file-wide rules read more than the range only
where the range cannot decide them (``read_jsonl_part``): a range without a line holding a string
``text`` is refused only if no range of the file holds one (the same one-line refusal, naming the
file's first line), and a range without any ``source`` gets nulls rather than the file name where
another range holds one. Both look at other ranges one at a time (bounded memory) and only in such
files.

A range's fingerprint is the sha256 of its bytes plus the file's name, the range, the line number
it starts after, the hashes of other ranges that may hold a ``source`` (they decide its
``source`` column) and the reader's version (``JSONL_READER``): appending lines to a file without
``source`` keeps the earlier ranges' scores. The per-range hashes and line counts take one pass
over the file, remembered by the file's stat signature in the process and in
``$KDATA_CACHE/text-units`` (the rule ``kdata.core.digests`` uses).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
from dataclasses import astuple, dataclass
from pathlib import Path

import pyarrow as pa

from kdata.core.atomic import write_json
from kdata.core.cache_admin import touch_used
from kdata.core.digests import MIN_BYTES, RACY_NS, signature
from kdata.core.errors import KdataError
from kdata.core.paths import cache_dir
from kdata.pools.jsonl import JSONL_READER, parse_jsonl, wrong_shape

# 64 MiB: parsing a range peaks at about 3× its bytes (~200 MB), whatever the file's size; a range
# holds thousands of ordinary documents, so per-unit costs (a cache entry, a score task, a
# fingerprint) stay small (a 20 GB file is ~300 units); and it matches --max-file-mb's default, the
# most kdata reads of any one pool file at once. Tests monkeypatch it.
SPLIT_BYTES = 64 << 20
CHUNK_BYTES = 16 << 20  # what the index pass and the cut search hold at once
PARTS_VERSION = 1  # bump when JsonlPart changes
# a key "source" as JSON may spell it: literally, or with a \u escape of one of its letters (searched
# apart: bytes.find and a pattern with a literal prefix scan ~10× faster than one alternation)
_SOURCE_KEY, _ESCAPED_LETTER = b'"source"', re.compile(rb"\\u00(?:73|6[fF]|75|72|63|65)")
_BOM = b"\xef\xbb\xbf"
MEMO_ENTRIES = 256  # files remembered in the process (each entry is a few hundred bytes per range)
_lock = threading.Lock()
_parts_memo: dict[tuple, list[JsonlPart]] = {}
_survey_memo: dict[tuple, tuple[tuple | None, bool]] = {}


@dataclass(frozen=True)
class JsonlPart:
    """One byte range ``[start, stop)`` of a JSONL file: the newlines before it (its first line is
    ``line0 + 1``), the sha256 of its bytes and whether it may hold a ``source`` key."""

    start: int
    stop: int
    line0: int
    sha256: str
    maybe_source: bool


def jsonl_cuts(path: Path) -> list[tuple[int, int]]:
    """The byte ranges of ``path``: one ``(0, size)`` for a file under ``SPLIT_BYTES``, else ranges of
    at least ``SPLIT_BYTES`` bytes, each ending just after a newline (the last one at the file's end).
    Reads only a line's worth past each cut (seek + read)."""
    try:
        size = os.path.getsize(path)
        if size <= SPLIT_BYTES:  # the common case: not opened here (a directory of many small files)
            return [(0, size)]
        cuts, start = [], 0
        with open(path, "rb") as f:
            while size - start > SPLIT_BYTES:
                nl = _newline_at_or_after(f, start + SPLIT_BYTES - 1)
                if nl is None or nl + 1 >= size:
                    break
                cuts.append((start, nl + 1))
                start = nl + 1
    except OSError as exc:
        raise KdataError(f"{path}: cannot read ({exc.strerror})") from None
    return [*cuts, (start, size)]


def _newline_at_or_after(f, pos: int) -> int | None:
    f.seek(pos)
    while chunk := f.read(1 << 20):
        i = chunk.find(b"\n")
        if i >= 0:
            return pos + i
        pos += len(chunk)
    return None


def jsonl_parts(path: Path, cuts: list[tuple[int, int]]) -> list[JsonlPart]:
    """``cuts`` (from ``jsonl_cuts`` when the pool was opened) with their line offsets and hashes:
    one pass over the file, remembered by its stat signature (``kdata.core.digests``' racy rule).
    A file that no longer cuts the same way changed since: one line saying so."""
    sig = _signature(path)
    key = (sig, tuple(cuts))
    with _lock:
        hit = _parts_memo.get(key)
    hit = hit or _recall(sig, cuts)
    if hit is not None:
        return hit
    wait = sig[2] + RACY_NS - time.time_ns()
    if 0 < wait <= RACY_NS and sig[1] >= MIN_BYTES:  # written just now: a pass started after the racy
        time.sleep(wait / 1e9)  # window can be remembered (else every unit's fingerprint would read the file)
        return jsonl_parts(path, cuts)
    started = time.time_ns()
    if jsonl_cuts(path) != cuts:
        raise _changed(path)
    parts = _index(path, cuts)
    if _signature(path) != sig:
        raise _changed(path)
    if sig[2] < started - RACY_NS:
        _remember(_parts_memo, key, parts)
        try:
            write_json(_memo_path(sig), {"version": PARTS_VERSION, "signature": list(sig), "cuts": cuts,
                                         "parts": [list(astuple(p)) for p in parts]})
        except OSError:  # a read-only cache: the process remembers
            pass
    return parts


def _signature(path: Path) -> tuple:
    try:
        return signature(Path(path).resolve())
    except OSError as exc:
        raise KdataError(f"{path}: cannot read ({exc.strerror})") from None


def _changed(path: Path) -> KdataError:
    return KdataError(f"{path}: changed while the pool was open (its line boundaries moved); run again")


def _memo_path(sig: tuple) -> Path:
    return cache_dir("text-units") / f"jsonl-parts-{hashlib.sha256(sig[0].encode()).hexdigest()[:32]}.json"


def _recall(sig: tuple, cuts: list[tuple[int, int]]) -> list[JsonlPart] | None:
    """The parts recorded on disk for this signature and these cuts, or None (absent, stale, corrupt)."""
    try:
        path = _memo_path(sig)
        entry = json.loads(path.read_text())
        if entry["version"] != PARTS_VERSION or entry["signature"] != list(sig) \
                or [tuple(c) for c in entry["cuts"]] != list(cuts):
            return None
        parts = [JsonlPart(*p) for p in entry["parts"]]
    except (OSError, ValueError, TypeError, KeyError):
        return None
    if [(p.start, p.stop) for p in parts] != list(cuts):
        return None
    touch_used(path)
    _remember(_parts_memo, (sig, tuple(cuts)), parts)
    return parts


def _remember(memo: dict, key: tuple, value) -> None:
    with _lock:
        if len(memo) >= MEMO_ENTRIES:
            memo.pop(next(iter(memo)))
        memo[key] = value


def _index(path: Path, cuts: list[tuple[int, int]]) -> list[JsonlPart]:
    """Each range's sha256, newline count and ``source`` candidacy, in chunks of ``CHUNK_BYTES``."""
    parts, lines = [], 0
    try:
        with open(path, "rb") as f:
            for start, stop in cuts:
                f.seek(start)
                h, newlines, maybe, tail, left = hashlib.sha256(), 0, False, b"", stop - start
                while left:
                    chunk = f.read(min(CHUNK_BYTES, left))
                    if not chunk:
                        raise _changed(path)
                    left -= len(chunk)
                    h.update(chunk)
                    newlines += chunk.count(b"\n")  # a key spanning two chunks is in tail + head
                    maybe = maybe or _maybe_source(tail + chunk[:8]) or _maybe_source(chunk)
                    tail = chunk[-8:]
                parts.append(JsonlPart(start, stop, lines, h.hexdigest(), maybe))
                lines += newlines
    except OSError as exc:
        raise KdataError(f"{path}: cannot read ({exc.strerror})") from None
    return parts


def _maybe_source(data: bytes) -> bool:
    return data.find(_SOURCE_KEY) >= 0 or _ESCAPED_LETTER.search(data) is not None


def part_fingerprint(name: str, parts: list[JsonlPart], k: int) -> str:
    """Range ``k``'s content hash with what else decides its table (module doc)."""
    p = parts[k]
    others = [q.sha256 for i, q in enumerate(parts) if i != k and q.maybe_source]
    dep = hashlib.sha256(",".join(others).encode()).hexdigest()[:16] if others else "none"
    return (f"sha256:{p.sha256}:jsonl-range({json.dumps(name)},{p.start}-{p.stop},line0={p.line0},source={dep})"
            f":{JSONL_READER}")


def read_jsonl_part(path: Path, *, name: str, parts: list[JsonlPart], k: int, fast: bool = True) -> pa.Table:
    """Range ``k``'s rows of the whole-file table of ``read_jsonl`` (``name``: the file's unit name)."""
    table, facts = parse_jsonl(_read_part(path, parts, k), name=name, source=Path(path).name,
                               line0=parts[k].line0, fast=fast)
    if not facts.any_text:
        first, any_text = _survey(path, parts, name=name, text=True)
        if first is not None and not any_text:
            raise wrong_shape(str(path), first)
    others = any(q.maybe_source for i, q in enumerate(parts) if i != k)
    if table.num_rows and not facts.any_source and others and _survey(path, parts, name=name, text=False)[1]:
        i = table.schema.get_field_index("source")
        table = table.set_column(i, table.schema.field(i), pa.nulls(table.num_rows, pa.string()))
    return table


def _read_part(path: Path, parts: list[JsonlPart], k: int) -> bytes:
    """Range ``k``'s bytes (seek + read; no BOM at the file's start), checked to be the bytes ``parts``
    describes: the file still has the parts' stat signature (else its index is taken again and compared)."""
    part = parts[k]
    try:
        with open(path, "rb") as f:
            f.seek(part.start)
            data = f.read(part.stop - part.start)
    except OSError as exc:
        raise KdataError(f"{path}: cannot read ({exc.strerror})") from None
    if len(data) != part.stop - part.start or jsonl_parts(path, [(p.start, p.stop) for p in parts])[k] != part:
        raise _changed(path)
    return data.removeprefix(_BOM) if part.start == 0 else data


def _survey(path: Path, parts: list[JsonlPart], *, name: str, text: bool) -> tuple[tuple | None, bool]:
    """One file-wide rule, read range by range (one held at a time) until decided, remembered by the
    ranges' hashes. ``text``: (the file's first non-blank line, whether some line holds a string
    ``text``), reading ranges in order; else (None, whether some line holds a ``source``), reading
    only the ranges that may."""
    key = (tuple(parts), text)
    with _lock:
        if key in _survey_memo:
            return _survey_memo[key]
    first, found = None, False
    for k, part in enumerate(parts):
        if found:
            break
        if text or part.maybe_source:
            _, f = parse_jsonl(_read_part(path, parts, k), name=name, source=Path(path).name, line0=part.line0)
            first = first or f.first
            found = f.any_text if text else f.any_source
    _remember(_survey_memo, key, (first if text else None, found))
    return first if text else None, found
