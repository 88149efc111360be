"""What a rerun into a finished OUT checks before answering "already complete": the pool is as it was.

The config hash holds the pool's spec, not its content: a JSONL file added to a directory, a file
edited in place or a Parquet directory grown keeps the hash. So ``write_output`` records, beside the
unit fingerprints (content hashes, ``kdata.report.pool_source``), the units' names and a stat digest
of the pool's files (``record_pool_state``), and a rerun compares (``pool_change``):

- the stat digest first: one ``stat`` per file under the pool path (relative path, size, mtime,
  inode), no byte read. Equal: the pool is as recorded.
- else (or when the manifest records none: older manifests, a pool written within ``RACY_NS`` of the
  record) the units' content fingerprints, as a new run would compute them: JSONL, Parquet and tar
  files by a sha256 remembered by stat signature (``kdata.core.digests``: only files whose stat
  changed are read); image-folder units read every file of the pool. Equal (a file touched, copied
  back): still complete. Otherwise the change is named by unit: added, changed, removed.

A manifest without unit fingerprints, a built-in pool, or a pool path that no longer exists has
nothing to compare: the rerun stays complete, as it always was.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

from kdata.core.digests import RACY_NS
from kdata.core.errors import KdataError
from kdata.pools.base import DEFAULT_LIMITS, PoolLimits

STAT_DIGEST = "stat_digest"  # keys in manifest["pool"] (beside pool_source.FINGERPRINTS)
UNIT_NAMES = "unit_names"
FROM_OUT = "from_out"
SHOWN = 3  # names listed per kind of change


def record_pool_state(section: dict, pool, *, config: dict) -> None:
    """Add ``pool``'s unit names and stat digest to ``section`` (the manifest's ``pool`` entry);
    ``config``: the run's (hashed) config, whose ``pool`` spec and limits a rerun compares with."""
    spec = config.get("pool") if isinstance(config.get("pool"), str) else getattr(pool, "spec", "")
    if pool is None or not getattr(pool, "units", None) or not spec:
        return
    section[UNIT_NAMES] = [u.name for u in pool.units]
    # a file changed since the pool was opened is not what this run read: no digest, a rerun compares content
    opened = getattr(pool, "opened_ns", None)
    digest = stat_digest(spec, limits=limits_of(config), trusted_before_ns=opened or time.time_ns())
    if digest is not None:
        section[STAT_DIGEST] = digest


def record_pool_from_out(section: dict, spec, *, out) -> None:
    """A relative pool spec, as seen from OUT (``from_out``): ``kdata card``/``inspect`` run from another
    directory read the pool back from there (``kdata.report.pool_source``), and the two can move together."""
    if isinstance(spec, str) and spec and not spec.startswith("builtin:") and not os.path.isabs(spec) \
            and os.path.exists(spec):
        section[FROM_OUT] = os.path.relpath(os.path.abspath(spec), os.path.abspath(out))


def spec_from_out(spec, *, out) -> str | None:
    """A model spec naming a relative file or folder (``student.pt2``, ``hf:models/s``) as seen from OUT,
    so the card's commands, run from OUT, find it; None for every other spec (``builtin:``, absolute
    paths, ``timm:``/``open_clip:`` names, a path that does not exist)."""
    if not isinstance(spec, str):
        return None
    prefix, path = ("hf:", spec[3:]) if spec.startswith("hf:") else ("", spec)
    if not path or ":" in path.split("/")[0] or os.path.isabs(path) or not os.path.exists(path):
        return None
    return prefix + os.path.relpath(os.path.abspath(path), os.path.abspath(out))


def record_models_from_out(models, *, out) -> None:
    """``models.<role>.from_out`` for each model given as a relative path (``spec_from_out``)."""
    for entry in (models or {}).values():
        seen = spec_from_out(entry.get("spec"), out=out) if isinstance(entry, dict) else None
        if seen is not None:
            entry[FROM_OUT] = seen


def stat_digest(spec: str, *, limits: PoolLimits = DEFAULT_LIMITS, trusted_before_ns: int | None = None
                ) -> str | None:
    """sha256 over (relative path, size, mtime ns, inode, device) of every file under the pool path (a
    file pool: itself). None where it cannot stand for the pool: a built-in pool, no such path, pools
    read through symlinks (``--follow-symlinks``), or (``trusted_before_ns``) a file modified within
    ``RACY_NS`` of that time, whose next write could keep its mtime."""
    if not spec or spec.startswith("builtin:") or limits.follow_symlinks:
        return None
    root = Path(spec)
    try:
        if root.is_file():
            entries = [("", os.stat(root))]
        elif root.is_dir():
            entries = []
            for dirpath, _dirs, files in os.walk(root):
                for name in files:
                    path = os.path.join(dirpath, name)
                    entries.append((os.path.relpath(path, root), os.stat(path)))
        else:
            return None
    except OSError:  # a dangling link, a file gone while listed: the fingerprints decide
        return None
    if trusted_before_ns is not None and any(st.st_mtime_ns >= trusted_before_ns - RACY_NS for _, st in entries):
        return None
    h = hashlib.sha256(b"kdata-pool-stat-v1\0")
    for rel, st in sorted(entries, key=lambda e: e[0]):
        h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}\0{st.st_dev}\n".encode("utf-8", "surrogateescape"))
    return "sha256:" + h.hexdigest()


def pool_change(manifest: dict) -> str | None:
    """None when the pool the manifest's run read is as recorded (or cannot be compared); otherwise
    what changed, as a phrase: ``b.jsonl added, a.jsonl changed``."""
    from kdata.pools.spec import open_pool
    from kdata.report.pool_source import recorded_fingerprints, unit_fingerprints

    cfg = manifest.get("config") if isinstance(manifest.get("config"), dict) else {}
    section = manifest.get("pool") if isinstance(manifest.get("pool"), dict) else {}
    spec, want = cfg.get("pool"), recorded_fingerprints(manifest)
    if not isinstance(spec, str) or not want or spec.startswith("builtin:") or not os.path.exists(spec):
        return None
    limits = limits_of(cfg)
    recorded = section.get(STAT_DIGEST)
    if recorded and stat_digest(spec, limits=limits) == recorded:
        return None
    try:
        pool = open_pool(spec, limits=limits)
        now = list(zip([u.name for u in pool.units], unit_fingerprints(pool)))
    except (KdataError, OSError) as exc:
        return f"it no longer opens ({str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__})"
    names = section.get(UNIT_NAMES)
    if isinstance(names, list) and len(names) == len(want) and all(isinstance(n, str) for n in names):
        return _named_changes(list(zip(names, want)), now)
    return _unnamed_changes(want, now)


def embedder_model(spec: str | None) -> dict:
    """``{"embedder": {"spec", "checksum"}}`` for the manifest's ``models`` (the checksum a loaded embedder
    reports, ``kdata.models.text_embedder``); empty without an embedder or when its directory is gone."""
    from kdata.models.hf import is_text_spec, text_model_path
    from kdata.models.hf_safety import model_checksum

    try:
        path = text_model_path(spec) if spec and is_text_spec(spec) else None
        return {"embedder": {"spec": spec, "checksum": model_checksum(path)}} if path and path.is_dir() else {}
    except (KdataError, OSError):
        return {}


def _content(fp: str) -> str:
    """The content hash of a fingerprint (``sha256:<hex>``), without the reader-version suffix that a
    kdata upgrade may change while the bytes stay the same."""
    return fp[:71] if fp.startswith("sha256:") else fp


def _by_file(units: list[tuple[str, str]]) -> dict[str, list[str]]:
    """Content hashes per file (a large JSONL file's byte ranges are one file: ``a.jsonl#bytes=…``)."""
    files: dict[str, list[str]] = {}
    for name, fp in units:
        files.setdefault(name.split("#bytes=", 1)[0], []).append(_content(fp))
    return files


def _named_changes(was: list[tuple[str, str]], now: list[tuple[str, str]]) -> str | None:
    old, new = _by_file(was), _by_file(now)
    if old == new:
        return None
    kinds = (("added", [n for n in new if n not in old]), ("changed", [n for n in new if n in old and new[n] != old[n]]),
             ("removed", [n for n in old if n not in new]))
    return ", ".join(_listed(names) + f" {kind}" for kind, names in kinds if names) or None


def _unnamed_changes(want: list[str], now: list[tuple[str, str]]) -> str | None:
    """A manifest without unit names (older kdata): the current units whose content it does not record."""
    recorded = {_content(f) for f in want}
    if sorted(_content(f) for f in want) == sorted(_content(fp) for _, fp in now):
        return None
    fresh = [name for name, fp in now if _content(fp) not in recorded]
    gone = len(recorded - {_content(fp) for _, fp in now}) - len(fresh)  # those not replaced by a fresh one
    parts = ([_listed(fresh) + " added or changed"] if fresh else []) + \
        ([f"{gone} recorded unit(s) removed"] if gone > 0 else [])
    return ", ".join(parts) or "its units differ from the recorded ones"


def _listed(names: list[str]) -> str:
    more = len(names) - SHOWN
    return ", ".join(names[:SHOWN]) + (f" and {more} more" if more > 0 else "")


def limits_of(config: dict) -> PoolLimits:
    """The pool limits a run's config recorded (``--follow-symlinks``, ``--max-file-mb``; defaults if absent)."""
    return PoolLimits(follow_symlinks=bool(config.get("follow_symlinks", DEFAULT_LIMITS.follow_symlinks)),
                      max_file_mb=float(config.get("max_file_mb") or DEFAULT_LIMITS.max_file_mb))


def as_recorded_pool(cfg, out):
    """``cfg`` with the pool spelled as OUT's manifest records it, when that spelling names the same pool
    from here (``--pool photos`` then ``--pool /abs/photos``, or ``../data/photos`` from the same
    directory): one pool, one run identity, so the rerun finds its finished run rather than a
    "different run". Any other case returns ``cfg`` unchanged."""
    import dataclasses

    from kdata.dataset.manifest import MANIFEST, read_manifest

    if not isinstance(cfg.pool, str) or not (Path(out) / MANIFEST).is_file():
        return cfg
    try:
        there = ((read_manifest(out) or {}).get("config") or {}).get("pool")
        same = isinstance(there, str) and there != cfg.pool and os.path.samefile(there, cfg.pool)
    except (OSError, KdataError, ValueError, TypeError):
        return cfg
    return dataclasses.replace(cfg, pool=there) if same else cfg
