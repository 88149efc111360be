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
quarantines it with that text. So does a directory symlink that is not followed
(``kdata.pools.folder_listing``: the listing, at any depth, class = the top folder).
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
from kdata.pools.folder_listing import IMAGE_EXTS, has_images, is_image, list_folder  # noqa: F401  (re-exported)

UNIT_FILES = 1000  # mean files per unit of a folder pool: the grain of caching and fan-out
LABELS_CSV = "labels.csv"


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
                 stray_top: bool = False, skipped: dict[str, str] | None = None):
        self.root, self.root_real = Path(root), os.path.realpath(root)
        self.files, self.labels, self.source, self.limits = files, labels, source, limits
        self.num_rows = len(files)
        self.stray_top = stray_top  # ImageFolder: a file beside the class folders is quarantined, not read
        self.skipped = skipped or {}  # directory links not followed (``folder_listing``): {path: why}

    def load(self, f: str) -> tuple[bytes | None, str | None]:
        if not is_utf8(f):
            return None, BAD_NAME
        if f in self.skipped:
            return None, self.skipped[f]
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
                 limits: PoolLimits, stray_top: bool = False, skipped: dict[str, str] | None = None) -> PoolUnit:
    memo: dict[str, str] = {}
    skipped = {f: skipped[f] for f in files if f in skipped} if skipped else {}  # this unit's own
    rows = FolderRows(root, files, labels, source=source, limits=limits, stray_top=stray_top, skipped=skipped)

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


def _folder_label(f: str, *, folder: bool = False) -> str | None:
    """ImageFolder: the top folder is the (web) label, in Unicode NFC (macOS writes names decomposed, NFD: the
    same class either way); none for top-level files or undecodable names. ``folder``: ``f`` is a directory
    (a link not followed), a class folder itself at the top."""
    if "/" not in f and not folder:
        return None
    top = f.split("/", 1)[0]
    return unicodedata.normalize("NFC", top) if is_utf8(top) else None


@register_reader(_is_image_folder)
def open_image_folder(spec: str, *, unit_files: int | None = None, limits: PoolLimits = DEFAULT_LIMITS) -> Pool:
    """An ImageFolder tree (label = top folder name) or a flat folder (labels from ``labels.csv``), in units
    of ``UNIT_FILES`` files on average cut by content (``kdata.pools.chunking``; ``unit_files``: fixed runs).

    Files are read under ``limits`` (regular files, symlinks inside the pool, a size cap); a file
    refused there, a directory link not followed (``list_folder``), or a name that is not UTF-8, is
    quarantined with the reason."""
    root = Path(spec)
    listing = list_folder(root, follow_symlinks=limits.follow_symlinks, own=(LABELS_CSV,))
    files, skipped = listing.files, listing.skipped
    csv_labels = _read_labels_csv(root / LABELS_CSV) if (root / LABELS_CSV).is_file() else None
    if csv_labels is not None:
        unknown = sorted(set(csv_labels) - set(files))
        if unknown:
            raise KdataError(f"{root / LABELS_CSV}: lists {len(unknown)} file(s) not in the pool, "
                             f"e.g. '{unknown[0]}'")
    tops = [_folder_label(f, folder=f in skipped) for f in files]
    labels = [csv_labels[f] if csv_labels is not None and f in csv_labels else top for f, top in zip(files, tops)]
    folders = sorted({lab for lab in tops if lab is not None})
    if csv_labels is not None:
        class_names = sorted({lab for lab in labels if lab is not None})
        layout = "flat folder + labels.csv" if not folders else "folder + labels.csv"
    else:
        class_names = folders or None
        layout = "ImageFolder" if folders else "flat folder (no labels)"
    units = []
    for i, j in fixed_cuts(len(files), size=unit_files) if unit_files else content_cuts(files, mean=UNIT_FILES):
        units.append(_folder_unit(root, files[i:j], labels[i:j], name=f"{escaped(files[i])}..{escaped(files[j - 1])}",
                                  source=root.name, limits=limits, stray_top=bool(folders) and csv_labels is None,
                                  skipped=skipped))
    return Pool(spec=spec, units=units, class_names=class_names,
                description=f"{layout} at {spec}: {_described(listing)}, {len(units)} unit(s)",
                extra={"layout": layout, "n_files": len(files), "links_not_followed": len(skipped),
                       "ignored": dict(listing.ignored)})


def _described(listing) -> str:
    """What the listing holds, for ``Pool.description`` (the manifest's ``pool.description``): the images,
    the directory links not followed, and the files ignored as not images by extension (five at most)."""
    n_links, ignored = len(listing.skipped), listing.ignored
    out = f"{len(listing.files) - n_links} images"
    if n_links:
        out += f", {n_links} directory symlink(s) not followed (quarantined)"
    if ignored:
        kinds = ", ".join(f"{ext} {n}" for ext, n in list(ignored.items())[:5]) + (", …" if len(ignored) > 5 else "")
        out += f", {sum(ignored.values())} file(s) ignored as not images ({kinds})"
    return out
