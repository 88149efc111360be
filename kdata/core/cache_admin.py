"""What kdata's cache holds, and pruning it: ``kdata cache`` (``kdata.core.paths.cache_root``).

A scheduled pipeline writes a score entry per pool unit × model pair × scoring config, a dedup
feature entry per unit, a parsed text unit per file content and a Prefect cache record per
scoring task; none of them expires by itself, so a nightly run over a changing pool grows the
cache without bound. An *entry* is the files of one directory that share a name up to its first
dot (``<key>.parquet`` + ``<key>.quarantine.json``; ``<key>.parquet`` + ``<key>.json``), and its
last use the newest modification time among them (readers touch an entry's marker on a hit:
``touch_used``). Only the derived sections are pruned — everything in them is made again on the
next run that needs it; the built-in pool and models, weight digests and the compiled helper
are listed but kept.

Pruning is safe beside running work: an entry whose lock is held (a run scoring that unit) is
skipped, one used in the last ``MIN_IDLE_S`` seconds is never removed (a run reads its score
entries again when it writes), a marker goes before its data (no reader trusts a half-removed
entry), and a curate flow whose Prefect record names a pruned score file scores that unit again.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from kdata.core.errors import KdataError
from kdata.core.lock import LOCK_SUFFIX, acquire

PRUNED = ("scores", "dedup-features", "text-units", "generate", "prefect-results")
KEPT = ("models", "pools", "digests", "native")
MIN_IDLE_S = 3600.0
MARKER_SUFFIXES = (".json",)  # removed first: an entry without its marker is a miss everywhere
UNITS = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


@dataclass
class Entry:
    """One cache entry: its section, key (the shared name), files, size and last use (epoch s)."""

    section: str
    key: str
    files: list[Path] = field(default_factory=list)
    bytes: int = 0
    last_used: float = 0.0


def touch_used(path: Path) -> None:
    """Record that a cache entry was used now (its marker's mtime), so pruning by last use keeps it.
    Best effort: a read-only cache stays as it is."""
    try:
        os.utime(path)
    except OSError:
        pass


def entries(root: Path, section: str) -> list[Entry]:
    """The entries of one section: its files grouped by the name before the first dot (lock files and a
    killed writer's staging files count with the entry they belong to), and each sub-directory (a
    built-in pool, a saved model) as one entry."""
    base = root / section
    found: dict[str, Entry] = {}
    try:
        children = sorted(base.iterdir())
    except OSError:
        return []
    for child in children:
        bare = child.name[1:] if child.name.startswith(".") else child.name  # .<key>.parquet.kdata-lock, .tmp
        key = child.name if child.is_dir() and not child.is_symlink() else bare.split(".", 1)[0]
        e = found.setdefault(key, Entry(section, key))
        for path in _files(child):
            try:
                st = path.lstat()
            except OSError:
                continue
            e.files.append(path)
            e.bytes += st.st_size
            if not path.name.endswith(LOCK_SUFFIX):
                e.last_used = max(e.last_used, st.st_mtime)
    return list(found.values())


def _files(path: Path) -> list[Path]:
    if not path.is_dir() or path.is_symlink():
        return [path]
    return [Path(d) / n for d, _, names in os.walk(path) for n in names]


def usage(root: Path) -> dict[str, dict]:
    """Per section: entries, bytes, oldest and newest last use, and whether ``prune`` may remove it."""
    out = {}
    for section in (*PRUNED, *KEPT):
        es = entries(root, section)
        used = [e.last_used for e in es if e.last_used]
        out[section] = {"entries": len(es), "bytes": sum(e.bytes for e in es), "pruned": section in PRUNED,
                        "oldest_use": min(used) if used else None, "newest_use": max(used) if used else None}
    return out


def prune(root: Path, *, older_than_s: float | None = None, max_bytes: int | None = None, dry_run: bool = False,
          now: float | None = None) -> dict:
    """Remove derived entries unused for ``older_than_s`` seconds, then the least recently used ones
    until the whole cache is at most ``max_bytes`` (never one used in the last ``MIN_IDLE_S`` s, nor one
    whose lock is held). Returns the counts and bytes removed and kept, and what was skipped why."""
    if older_than_s is None and max_bytes is None:
        raise KdataError("kdata cache prune: give --older-than, --max-size or both")
    now = time.time() if now is None else now
    kept_bytes = sum(e.bytes for s in KEPT for e in entries(root, s))
    pool = sorted((e for s in PRUNED for e in entries(root, s)), key=lambda e: e.last_used)
    total = kept_bytes + sum(e.bytes for e in pool)
    removed, busy, recent = [], 0, 0
    for e in pool:
        idle = now - e.last_used
        stale = older_than_s is not None and idle > older_than_s
        over = max_bytes is not None and total > max_bytes
        if not (stale or over):
            continue
        if idle < MIN_IDLE_S:
            recent += 1
            continue
        if dry_run or _remove(e):
            removed.append(e)
            total -= e.bytes
        else:
            busy += 1
    return {"removed": len(removed), "removed_bytes": sum(e.bytes for e in removed),
            "by_section": {s: sum(1 for e in removed if e.section == s) for s in PRUNED},
            "left_bytes": total, "skipped_in_use": busy, "skipped_recent": recent, "dry_run": dry_run,
            "over_max_size": max_bytes is not None and total > max_bytes}


def _remove(e: Entry) -> bool:
    """Delete an entry's files under its lock (markers first); False when another process holds it."""
    data = [p for p in e.files if not p.name.startswith(".")]
    lock_target = next((p for p in data if not p.name.endswith(MARKER_SUFFIXES)), data[0] if data else None)
    if lock_target is None:  # only leftovers of a killed writer (lock or temporary files)
        return _unlink_leftovers(e)
    try:
        lock = acquire(lock_target, wait=False)
    except KdataError:
        return False
    try:
        for p in sorted(data, key=lambda p: not p.name.endswith(MARKER_SUFFIXES)):
            p.unlink(missing_ok=True)
        for p in e.files:
            if p.name.startswith(".") and not p.name.endswith(LOCK_SUFFIX):
                p.unlink(missing_ok=True)
    finally:
        lock.release()
    _drop_empty_dirs(e)
    return True


def _drop_empty_dirs(e: Entry) -> None:
    for d in sorted({p.parent for p in e.files}, key=lambda d: len(d.parts), reverse=True):
        if d.name != e.section:
            try:
                d.rmdir()
            except OSError:
                pass


def _unlink_leftovers(e: Entry) -> bool:
    for p in e.files:
        if p.name.endswith(LOCK_SUFFIX):
            continue  # a lock file is removed by its holder on release; an unheld one is harmless
        p.unlink(missing_ok=True)
    return True


def parse_size(text: str) -> int:
    """``500M``, ``20G``, ``1.5T``, ``123456B`` (bytes) → bytes; one line for anything else, a bare number
    included (``--older-than 30`` is days: ``--max-size 20`` meaning 20G would have emptied the cache)."""
    raw = str(text).strip().lower()
    t = raw.removesuffix("ib").removesuffix("b")
    try:
        if t and t[-1] in UNITS:
            value = float(t[:-1]) * UNITS[t[-1]]
        else:
            value = float(t) if t != raw else -1.0  # bytes only with their B
    except ValueError:
        value = -1.0
    if not value >= 0 or value != value or value == float("inf"):
        raise KdataError(f"--max-size {text!r}: give a size with its unit, such as 500M, 20G, 1.5T or 4096B")
    return int(value)


def parse_age(text: str) -> float:
    """``30d``, ``12h``, ``90m``, ``7`` (days) → seconds; one line for anything else."""
    t = str(text).strip().lower()
    scale = {"d": 86400.0, "h": 3600.0, "m": 60.0}
    try:
        value = float(t[:-1]) * scale[t[-1]] if t and t[-1] in scale else float(t) * 86400.0
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise KdataError(f"--older-than {text!r}: give an age such as 30d, 12h or 90m (a bare number is days)")
    return value
