"""Readers for image folders on disk: ImageFolder trees and flat folders (+ ``labels.csv``).

Each folder pool is cut into units of ``UNIT_FILES`` files on average (boundaries set by content),
each with a content fingerprint (relative paths, labels and the sha256 of every file's bytes), so
the score cache is invalidated exactly when content changes. WebDataset tar shards have their own
reader (``kdata.pools.tar``), which shares ``pool_table`` and ``has_images`` from here.

``sample_id`` is the file's path relative to POOL (POSIX separators). Two files with identical
bytes stay two samples: duplicates are dedup's business. Images are read as raw bytes and decoded
later in DataLoader workers, where a corrupt, truncated or empty file is quarantined with its
error. Each unit also has a range-addressable plan (``FolderRows``: a file per row) so a scoring
worker reads its own batch's bytes.

Files are read under ``PoolLimits`` (``kdata.pools.files``): regular files only, symlinks only
inside the pool, a size cap per file. What a reader refuses (a dangling link, a symlink loop, a
name that is not UTF-8) stays a row, with ``image`` null and the reason in ``read_error``; scoring
quarantines it with that text.
"""

from __future__ import annotations

import csv
import hashlib
import os
import unicodedata
from pathlib import Path

import pyarrow as pa

from kdata.core.errors import KdataError
from kdata.dataset.schema import POOL_SCHEMA, READ_ERROR
from kdata.pools.base import (
    DEFAULT_LIMITS,
    Pool,
    PoolLimits,
    PoolUnit,
    UnitRows,
    register_reader,
)
from kdata.pools.chunking import content_cuts, fixed_cuts
from kdata.pools.files import escaped, is_utf8, read_capped

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
UNIT_FILES = 1000  # mean files per unit of a folder pool: the grain of caching and fan-out
LABELS_CSV = "labels.csv"


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTS)


def pool_table(ids: list[str], images: list[bytes | None], labels: list[str | None], *, source: str,
               errors: list[str | None] | None = None) -> pa.Table:
    """A pool-schema table plus the ``read_error`` column (why a payload could not be read, else null)."""
    n = len(ids)
    return pa.table({
        "sample_id": pa.array(ids, pa.string()),
        "image": pa.array(images, pa.binary()),
        "text": pa.nulls(n, pa.string()),
        "label": pa.array(labels, pa.string()),
        "source": pa.array([source] * n, pa.string()),
        "domain": pa.nulls(n, pa.string()),
        "parent_id": pa.nulls(n, pa.string()),
        "kind": pa.array(["original"] * n, pa.string()),
        READ_ERROR: pa.array(errors if errors is not None else [None] * n, pa.string()),
    }, schema=POOL_SCHEMA.append(pa.field(READ_ERROR, pa.string())))


# ------------------------------------------------------------------------------------------------
# Folders: ImageFolder layout (POOL/<label>/<file>) and flat folders with an optional labels.csv

BAD_NAME = "file name is not valid UTF-8 (shown with backslash escapes)"
STRAY = ("file at the top of an ImageFolder pool, not in a class folder: it has no label (move it into its "
         "class folder, or out of the pool)")


def _list_images(root: Path, *, follow_symlinks: bool = False) -> list[str]:
    """Relative POSIX paths of the image files under ``root``, sorted; hidden entries skipped.

    Names are as the file system gives them (undecodable bytes as surrogate escapes). Directory
    symlinks are descended only with ``follow_symlinks``, each real directory once (no loops)."""
    def unlistable(exc: OSError):  # os.walk would skip an unreadable directory silently
        raise KdataError(f"{escaped(str(exc.filename))}: cannot list the directory ({exc.strerror})")

    out, seen = [], set()
    for dirpath, dirnames, filenames in os.walk(root, onerror=unlistable, followlinks=follow_symlinks):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel = Path(dirpath).relative_to(root)
        for f in filenames:
            if not f.startswith(".") and _is_image(f):
                out.append((rel / f).as_posix())
    return sorted(out)


def has_images(root: Path, *, depth: int = 2) -> bool:
    """True when ``root`` holds image files at its top level or one folder down (cheap probe)."""
    try:
        with os.scandir(root) as it:
            entries = list(it)
    except OSError:
        return False
    for e in entries:
        if _is_image(e.name) and _entry_is(e, "file"):
            return True
    if depth > 1:
        return any(not e.name.startswith(".") and _entry_is(e, "dir") and has_images(Path(e.path), depth=depth - 1)
                   for e in entries)
    return False


def _entry_is(entry: os.DirEntry, kind: str) -> bool:
    """``entry.is_file()`` / ``is_dir()`` (following links), False when that cannot be told: a symlink
    loop, say (ELOOP), which the listing keeps and the read quarantines with its error."""
    try:
        return entry.is_file() if kind == "file" else entry.is_dir()
    except OSError:
        return False


def _read_labels_csv(path: Path) -> dict[str, str]:
    """``file,label`` rows (header required) → {relative path: label}; one-line errors."""
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError) as exc:
        raise KdataError(f"{path}: cannot read labels ({exc})") from None
    if not rows or [c.strip().lower() for c in rows[0][:2]] != ["file", "label"]:
        raise KdataError(f"{path}: expected a header line 'file,label'")
    labels: dict[str, str] = {}
    for n, row in enumerate(rows[1:], start=2):
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) < 2:
            raise KdataError(f"{path}: line {n}: expected 'file,label', got {','.join(row)!r}")
        name, label = row[0].strip().replace("\\", "/"), row[1].strip()
        if name in labels:
            raise KdataError(f"{path}: line {n}: file '{name}' is listed twice")
        labels[name] = label
    return labels


class FolderRows(UnitRows):
    """A folder unit's files by position, read (under the pool's limits) by the worker that decodes them."""

    def __init__(self, root: Path, files: list[str], labels: list[str | None], *, source: str, limits: PoolLimits,
                 stray_top: bool = False):
        self.root, self.root_real = Path(root), os.path.realpath(root)
        self.files, self.labels, self.source, self.limits = files, labels, source, limits
        self.num_rows = len(files)
        self.stray_top = stray_top  # ImageFolder: a file beside the class folders is quarantined, not read

    def load(self, f: str) -> tuple[bytes | None, str | None]:
        if not is_utf8(f):
            return None, BAD_NAME
        data, err = read_capped(self.root / f, root_real=self.root_real, limits=self.limits)
        if self.stray_top and "/" not in f and err is None:  # what cannot be read says so first
            return None, STRAY
        return data, err

    def sample_ids(self) -> pa.Array:
        return pa.array([escaped(f) for f in self.files], pa.string())  # as ``read_rows`` names them

    def read_rows(self, start: int, stop: int) -> pa.Table:
        return self._read(range(start, min(stop, self.num_rows)))

    def take(self, rows) -> pa.Table:
        return self._read([int(i) for i in rows])

    def read_column(self, name: str) -> pa.ChunkedArray | None:
        """Every column but ``image`` comes from the listing (ids, labels) or is null: no file is read."""
        if name == "image" or name not in POOL_SCHEMA.names:
            return super().read_column(name)
        ids = [escaped(f) for f in self.files]
        return pool_table(ids, [None] * len(ids), self.labels, source=self.source).column(name)

    def _read(self, at) -> pa.Table:
        files = [self.files[i] for i in at]
        got = [self.load(f) for f in files]
        # Arrow strings must be UTF-8: undecodable names are escaped
        return pool_table([escaped(f) for f in files], [b for b, _ in got], [self.labels[i] for i in at],
                           source=self.source, errors=[e for _, e in got])


def _folder_unit(root: Path, files: list[str], labels: list[str | None], *, name: str, source: str,
                 limits: PoolLimits, stray_top: bool = False) -> PoolUnit:
    memo: dict[str, str] = {}
    rows = FolderRows(root, files, labels, source=source, limits=limits, stray_top=stray_top)

    def fingerprint() -> str:
        if "fp" not in memo:
            h = hashlib.sha256(b"kdata-folder-unit-v1\0")
            for f, lab in zip(files, labels):
                data, err = rows.load(f)
                digest = hashlib.sha256(data).hexdigest() if data is not None else f"unreadable: {err}"
                h.update(f"{escaped(f)}\0{lab}\0{digest}\0".encode())
            memo["fp"] = "sha256:" + h.hexdigest()
        return memo["fp"]

    present = {lab for lab in labels if lab is not None}
    return PoolUnit(name=name, read=lambda: rows.read_rows(0, rows.num_rows), fingerprint=fingerprint,
                    path=str(root), labels=lambda: set(present), rows=lambda: rows)


def _is_image_folder(spec: str) -> bool:
    p = Path(spec)
    return p.is_dir() and has_images(p) and not any(p.rglob("*.parquet"))


def _folder_label(f: str) -> str | None:
    """ImageFolder: the top folder is the (web) label, in Unicode NFC (macOS writes names decomposed, NFD: the
    same class either way); none for top-level files or undecodable names."""
    if "/" not in f:
        return None
    top = f.split("/", 1)[0]
    return unicodedata.normalize("NFC", top) if is_utf8(top) else None


@register_reader(_is_image_folder)
def open_image_folder(spec: str, *, unit_files: int | None = None, limits: PoolLimits = DEFAULT_LIMITS) -> Pool:
    """An ImageFolder tree (label = top folder name) or a flat folder (labels from ``labels.csv``), in units
    of ``UNIT_FILES`` files on average cut by content (``kdata.pools.chunking``; ``unit_files``: fixed runs).

    Files are read under ``limits`` (regular files, symlinks inside the pool, a size cap); a file
    refused there, or with a name that is not UTF-8, is quarantined with the reason."""
    root = Path(spec)
    files = _list_images(root, follow_symlinks=limits.follow_symlinks)
    csv_labels = _read_labels_csv(root / LABELS_CSV) if (root / LABELS_CSV).is_file() else None
    if csv_labels is not None:
        unknown = sorted(set(csv_labels) - set(files))
        if unknown:
            raise KdataError(f"{root / LABELS_CSV}: lists {len(unknown)} file(s) not in the pool, "
                             f"e.g. '{unknown[0]}'")
    labels: list[str | None] = []
    for f in files:
        labels.append(csv_labels[f] if csv_labels is not None and f in csv_labels else _folder_label(f))
    folders = sorted({lab for f in files if (lab := _folder_label(f)) is not None})
    if csv_labels is not None:
        class_names = sorted({lab for lab in labels if lab is not None})
        layout = "flat folder + labels.csv" if not folders else "folder + labels.csv"
    else:
        class_names = folders or None
        layout = "ImageFolder" if folders else "flat folder (no labels)"
    units = []
    for i, j in fixed_cuts(len(files), size=unit_files) if unit_files else content_cuts(files, mean=UNIT_FILES):
        units.append(_folder_unit(root, files[i:j], labels[i:j], name=f"{escaped(files[i])}..{escaped(files[j - 1])}",
                                  source=root.name, limits=limits, stray_top=bool(folders) and csv_labels is None))
    return Pool(spec=spec, units=units, class_names=class_names,
                description=f"{layout} at {spec}: {len(files)} images, {len(units)} unit(s)",
                extra={"layout": layout, "n_files": len(files)})
