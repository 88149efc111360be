"""The curated dataset behind a training source, checked before any of it is read.

``kdata train`` checks DIR against its manifest first (``verify_source``: every checksum, every
count, the shard paths inside DIR — the check ``kdata dedup`` and ``kdata augment`` make), so a
damaged manifest or shard is one line naming the problem, and no file the manifest points to is
opened before its path was found inside the dataset. With ``--no-verify`` the manifest's own fields
are still checked (``check_manifest``: no file read, shard paths inside DIR), so its readers never
trip over a field of the wrong type.

A dataset verified once is not hashed again by the same process while nothing in it changed (the
size and modification time of every file under it): the CLI checks DIR before it reads anything,
and the trainer it then calls checks the same DIR again.
"""

from __future__ import annotations

import os
from pathlib import Path

from kdata.core.errors import KdataError
from kdata.dataset.manifest import MANIFEST

_VERIFIED: dict[Path, tuple] = {}  # dataset root -> what its files were when it was found intact


def dataset_root(source) -> Path | None:
    """The curated dataset directory (the one holding ``manifest.json``) that ``source`` belongs to:
    the directory itself, its ``data/`` folder, or one of its shard files; None otherwise."""
    if isinstance(source, (list, tuple)):
        return None
    p = Path(source)
    cands = [p] if p.is_dir() else []
    if p.is_file():
        p = p.parent
    if p.name == "data":  # OUT/data or a shard inside it
        cands.append(p.parent)
    return next((c for c in cands if (c / MANIFEST).is_file()), None)


def _state(root: Path) -> tuple:
    """(relative path, size, mtime) of every file under ``root``: what a change to the dataset changes."""
    rows = []
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            st = os.stat(os.path.join(dirpath, name))
            rows.append((os.path.relpath(os.path.join(dirpath, name), root), st.st_size, st.st_mtime_ns))
    return tuple(sorted(rows))


def verify_source(source) -> bool:
    """Check the curated dataset behind ``source`` against its manifest before training on it
    (every checksum, every count: ``kdata.dataset.writer.verify``); True when it was checked,
    False when there is no manifest to check against. A damaged dataset raises ``KdataError``."""
    root = dataset_root(source)
    if root is None:
        return False
    from kdata.dataset.writer import require_intact

    key, before = root.resolve(), _state(root)
    if _VERIFIED.get(key) == before:
        return True
    require_intact(root, refusal="not training on it", hint=", --no-verify trains anyway")
    _VERIFIED[key] = before
    return True


def check_manifest(source) -> None:
    """The manifest of the dataset behind ``source``, if any, has the fields its readers rely on, of the
    types kdata writes (``kdata.dataset.manifest_checks.check_fields``; no file read; counts unchecked): one line otherwise."""
    root = dataset_root(source)
    if root is None:
        return
    from kdata.dataset.integrity import inside
    from kdata.dataset.manifest_checks import check_fields
    from kdata.dataset.writer import read_manifest

    manifest = read_manifest(root)
    problems = check_fields(root, manifest) if isinstance(manifest, dict) else []  # types only: --no-verify
    #                                                                  trains on counts that do not add up
    if problems:
        raise KdataError(f"{problems[0]}; kdata inspect {root} lists every problem")
    for f in (manifest or {}).get("files") or []:  # a list of objects: manifest_shape checked it
        if inside(root, f.get("path")) is None:
            raise KdataError(f"{root / MANIFEST}: shard path {f.get('path')!r} points outside the dataset "
                             f"(or is no path); kdata inspect {root} lists every problem")
