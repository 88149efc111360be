"""Checked cache entries: a Parquet file and the JSON marker written after it, which records the
file's row count, size and CRC-32 (and whatever the cache keeps beside them).

An entry is trusted only when its marker parses and every recorded fact holds: the Parquet file is
there, has the recorded size and CRC-32, its footer parses, and its row count and schema are the
expected ones. Anything else is a damaged entry (``DamagedEntry``, naming the file at fault): the
cache treats it as a miss, and the holder of the entry's lock drops it (``drop_entry``), says so in
one warning line (``warn_dropped``) and computes it again. A Parquet file without its marker is an
unfinished write (a killed run): a plain miss, silently overwritten as before. A marker that records
no rows, size and CRC-32 (written before they were recorded) is damaged too: computed again once.

The whole-file CRC-32 is what catches bytes damaged inside a data page, which the footer does not
describe. The check on a hit (one read of the file, zlib's CRC-32 over it, the footer) costs about
a tenth of the Parquet read that follows it: 0.9 ms against 10 ms for a 1,000-row, 1.1 MB scores
unit, 15 ms against 135 ms for 10,000 rows (22 MB); sha256 instead of CRC-32 would cost about 40 %.
It guards against damage, not against an adversary who can write the cache.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from kdata.core.atomic import write_json, write_parquet
from kdata.core.cache_admin import touch_used
from kdata.core.errors import KdataError
from kdata.core.lock import Lock
from kdata.core.warn import warn
from kdata.dataset.schema import validate_scores

RECORDED = ("rows", "bytes", "crc32")  # the facts every marker records about its Parquet file


class DamagedEntry(Exception):
    """A cache entry that cannot be read or does not match its marker; ``path`` is the file at fault."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = Path(path), reason


def write_entry(path: Path, marker: Path, table: pa.Table, fields: dict, *, row_group_size: int = 1024) -> None:
    """Write ``table`` to ``path`` and then the marker (``fields`` plus the file's rows, size and
    CRC-32), both atomically; the marker, written last, marks the entry complete. Call it holding
    the entry's lock (``kdata.core.lock.acquire(path, wait=True)``)."""
    write_parquet(path, table, row_group_size=row_group_size)
    with pa.OSFile(str(path)) as src:
        buf = src.read_buffer()
    size, crc = buf.size, zlib.crc32(buf)
    write_json(marker, {**fields, "rows": table.num_rows, "bytes": size, "crc32": crc})


def read_marker(marker: Path) -> dict | None:
    """The marker's fields, or None when there is none (no entry, or one still being written);
    ``DamagedEntry`` when it cannot be read, is not a JSON object or lacks a recorded fact."""
    try:
        raw = marker.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise DamagedEntry(marker, f"cannot be read ({exc.strerror})") from None
    try:
        fields = json.loads(raw)
    except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError alike
        raise DamagedEntry(marker, f"is not valid JSON ({exc})") from None
    if not isinstance(fields, dict):
        raise DamagedEntry(marker, "is not a JSON object")
    for name in RECORDED:
        if not _count(fields.get(name)):
            raise DamagedEntry(marker, f"records no valid '{name}' (an older or foreign entry)")
    return fields


def check_parquet(path: Path, fields: dict, check_schema: Callable[[pa.Schema], None], *,
                  read: bool = False) -> pa.Table | None:
    """Check the Parquet file of an entry against its marker's ``fields`` (size, CRC-32, rows) and
    ``check_schema`` (raises on a wrong schema); with ``read``, return its table, read from the very
    bytes checked. Raises ``DamagedEntry`` naming ``path``."""
    try:  # one read through one descriptor: the bytes checked are the bytes parsed (no mapping to fault)
        with pa.OSFile(str(path)) as src:
            buf = src.read_buffer()
    except FileNotFoundError:
        raise DamagedEntry(path, "is missing (its marker is there)") from None
    except OSError as exc:
        raise DamagedEntry(path, f"cannot be read ({exc})") from None
    if buf.size != fields["bytes"]:
        raise DamagedEntry(path, f"is {buf.size} bytes, the entry records {fields['bytes']}")
    if zlib.crc32(buf) != fields["crc32"]:
        raise DamagedEntry(path, "does not match the CRC-32 its entry records (damaged bytes)")
    try:
        pf = pq.ParquetFile(pa.BufferReader(buf))
        if pf.metadata.num_rows != fields["rows"]:
            raise DamagedEntry(path, f"has {pf.metadata.num_rows} rows, the entry records {fields['rows']}")
        check_schema(pf.schema_arrow)
        return pf.read() if read else None
    except (OSError, pa.ArrowException, KdataError) as exc:
        raise DamagedEntry(path, f"is not a readable entry ({_line(exc)})") from None


def read_unit_entry(path: Path, qpath: Path, unit: str, *, check_schema: Callable[[pa.Schema], None] | None = None
                    ) -> tuple[list[tuple[str, str]], int] | None:
    """A score cache entry of pool unit ``unit`` (``kdata.scoring.score.UnitCache``, text scoring): its
    (quarantined, n_in), None when it is absent or unfinished, ``DamagedEntry`` when damaged.
    ``check_schema`` checks the Parquet schema (default: the image scores schema)."""
    fields = read_marker(qpath)
    if fields is None:
        return None
    quarantined = fields.get("quarantined")
    if not _count(fields.get("n_in")) or not isinstance(quarantined, list) or \
            not all(isinstance(q, list) and len(q) in (2, 3) and all(isinstance(x, str) for x in q[:2])
                    and (len(q) == 2 or q[2] is None or isinstance(q[2], str)) for q in quarantined):
        raise DamagedEntry(qpath, "does not record the unit's n_in and quarantined samples")
    if fields.get("unit") != unit:
        raise DamagedEntry(qpath, f"belongs to unit {fields.get('unit')!r}, not {unit!r}")
    check_parquet(path, fields, check_schema or (lambda schema: validate_scores(schema, where=str(path))))
    touch_used(qpath)  # `kdata cache prune` removes entries by last use
    return [tuple(q) for q in quarantined], fields["n_in"]  # (sample_id, error[, web label])


def entry_intact(path: Path, unit: str) -> bool:
    """Whether the score entry ``path`` (its ``.quarantine.json`` marker beside it) is complete and
    matches its marker (size, CRC-32, rows), whatever its schema."""
    try:
        return read_unit_entry(path, path.with_name(path.stem + ".quarantine.json"), unit,
                               check_schema=lambda schema: None) is not None
    except DamagedEntry:
        return False


def drop_entry(lock: Lock, path: Path, marker: Path) -> None:
    """Remove a damaged entry (marker first: no reader trusts a half-removed entry). Only the holder
    of the entry's lock may: no writer is then between its Parquet file and its marker."""
    if not lock.covers(path):
        raise RuntimeError(f"{path}: dropping a cache entry needs its lock")
    marker.unlink(missing_ok=True)
    path.unlink(missing_ok=True)


def warn_dropped(damage: DamagedEntry, what: str) -> None:
    """A warning (``kdata.core.warn``) naming the damaged file: the entry was dropped and is being made again."""
    warn(f"{what} {damage.path}: {damage.reason}; dropped, computed again and rewritten")


def _count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
