"""Parsed text units kept as Arrow files in ``$KDATA_CACHE/text-units`` and memory-mapped on read."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pyarrow as pa

from kdata.core.atomic import atomic_path
from kdata.core.cache_admin import touch_used
from kdata.core.digests import sha256_file_memo
from kdata.core.paths import cache_dir
from kdata.core.version import __version__

UNIT_CACHE_VERSION = 3  # bump when the parsed table of a unit changes for the same file (2: no-text files refused;
#                          3: read errors put the line number in trailing brackets)


def cached_unit_table(path: Path, parse, *, key_parts: list, digest: str | None = None) -> pa.Table:
    """A text unit's pool table, parsed once per file content and kept as an Arrow file in
    ``$KDATA_CACHE/text-units``; every read memory-maps it (zero-copy).

    A unit is read several times per run (scoring, curation's payload, the card) and across reruns.
    Keeping each parsed unit on the Python heap would hold the whole pool in memory; a mapped file
    costs only pages the OS can drop and re-reads without parsing JSON again. The key is the file's
    sha256 (memoised by stat, ``kdata.core.digests``) with kdata's version and ``key_parts`` (the
    unit name, which the default sample ids use); ``digest`` replaces the file's sha256 where ``parse``
    reads part of the file (a byte range of a large JSONL file: its fingerprint). Where the cache
    cannot be written (read-only), the parsed table is returned as it is; an unreadable entry is
    parsed again and replaced."""
    key = json.dumps([UNIT_CACHE_VERSION, __version__, digest or sha256_file_memo(path), *key_parts], sort_keys=True)
    try:
        entry = cache_dir("text-units") / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.arrow"
    except OSError:
        return parse()
    if entry.is_file():
        try:
            table = _mapped(entry)
            touch_used(entry)  # `kdata cache prune` removes entries by last use
            return table
        except (OSError, pa.ArrowInvalid):
            pass  # torn or foreign file: parse again and replace it
    table = parse()
    try:
        with atomic_path(entry) as tmp, pa.OSFile(str(tmp), "wb") as sink, \
                pa.ipc.new_file(sink, table.schema) as writer:
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
