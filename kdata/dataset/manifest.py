"""A curated dataset's ``manifest.json``: its name, reading it, and "is DIR a curated dataset?".

The manifest is the dataset's completion marker (the writer renames it into place last), so a
directory without one is not a curated dataset, or one still being written.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from kdata.core.errors import KdataError

MANIFEST = "manifest.json"


def read_manifest(out: str | os.PathLike) -> dict | None:
    """The manifest of ``out`` (None when it has none); an unreadable one or not a JSON object is one line."""
    path = Path(out) / MANIFEST
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
        raise KdataError(f"{path}: unreadable manifest ({str(exc).splitlines()[0]})") from None
    if not isinstance(manifest, dict):
        raise KdataError(f"{path}: not a kdata manifest (a JSON {type(manifest).__name__}, not an object)")
    return manifest


def curated_manifest(out: str | os.PathLike) -> dict:
    """The manifest of the curated dataset directory ``out``: a missing directory, a file, or a directory
    without a manifest is one line (what ``kdata inspect``, ``kdata card`` and the derived steps refuse)."""
    p = Path(out)
    if not p.is_dir():
        raise KdataError(f"{out}: {'not a directory' if p.exists() else 'no such directory'} "
                         "(expected a curated dataset)")
    manifest = read_manifest(p)
    if manifest is None:
        raise KdataError(f"{out}: not a kdata dataset (no {MANIFEST})")
    return manifest
