"""Readers for image pools on disk: ImageFolder trees, flat folders (+ ``labels.csv``), WebDataset tars.

Each reader turns a spec into a ``Pool`` of units of bounded size (``UNIT_FILES`` files per unit
on average for folders, boundaries set by content; one unit per tar shard), each with a content fingerprint (relative paths, labels and
the sha256 of every file's bytes), so the score cache is invalidated exactly when content changes.

``sample_id`` is the file's path relative to POOL (POSIX separators) for folders and the sample
key for tars. Two files with identical bytes stay two samples: duplicates are dedup's business.
Images are read as raw bytes and decoded later in DataLoader workers, where a corrupt,
truncated or empty file is quarantined with its error. Each unit also has a range-addressable
plan (``FolderRows``: a file per row; ``TarRows``: member offsets from the shard's headers) so a
scoring worker reads its own batch's bytes.

Files are read under ``PoolLimits`` (``kdata.pools.files``): regular files only, symlinks only
inside the pool, a size cap per file. What a reader refuses (or a name that is not UTF-8) stays
a row, with ``image`` null and the reason in ``read_error``; scoring quarantines it with that text.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import os
import re
import tarfile
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
from kdata.pools.files import check_entry, escaped, is_utf8, over_cap, read_capped

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
UNIT_FILES = 1000  # mean files per unit of a folder pool: the grain of caching and fan-out
LABELS_CSV = "labels.csv"


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTS)


def _pool_table(ids: list[str], images: list[bytes | None], labels: list[str | None], *, source: str,
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
        if e.is_file() and _is_image(e.name):
            return True
    if depth > 1:
        return any(e.is_dir() and not e.name.startswith(".") and has_images(Path(e.path), depth=depth - 1)
                   for e in entries)
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

    def __init__(self, root: Path, files: list[str], labels: list[str | None], *, source: str, limits: PoolLimits):
        self.root, self.root_real = Path(root), os.path.realpath(root)
        self.files, self.labels, self.source, self.limits = files, labels, source, limits
        self.num_rows = len(files)

    def load(self, f: str) -> tuple[bytes | None, str | None]:
        if not is_utf8(f):
            return None, BAD_NAME
        return read_capped(self.root / f, root_real=self.root_real, limits=self.limits)

    def read_rows(self, start: int, stop: int) -> pa.Table:
        files = self.files[start:stop]
        got = [self.load(f) for f in files]
        # Arrow strings must be UTF-8: undecodable names are escaped
        return _pool_table([escaped(f) for f in files], [b for b, _ in got], self.labels[start:stop],
                           source=self.source, errors=[e for _, e in got])


def _folder_unit(root: Path, files: list[str], labels: list[str | None], *, name: str, source: str,
                 limits: PoolLimits) -> PoolUnit:
    memo: dict[str, str] = {}
    rows = FolderRows(root, files, labels, source=source, limits=limits)

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
    """ImageFolder: the top folder is the (web) label; none for top-level files or undecodable names."""
    if "/" not in f:
        return None
    top = f.split("/", 1)[0]
    return top if is_utf8(top) else None


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
                                  source=root.name, limits=limits))
    return Pool(spec=spec, units=units, class_names=class_names,
                description=f"{layout} at {spec}: {len(files)} images, {len(units)} unit(s)",
                extra={"layout": layout, "n_files": len(files)})


# ------------------------------------------------------------------------------------------------
# WebDataset tar shards: members ``<key>.<ext>`` grouped by key; image from jpg/jpeg/png/webp,
# label from ``.cls`` (text: a class name, or an index written as the class name, e.g. '3').

_BRACE = re.compile(r"\{(\d+)\.\.(\d+)\}")


def _expand_braces(spec: str) -> list[str]:
    """``shard-{000..009}.tar`` → the ten names (WebDataset's brace notation, zero padding kept)."""
    m = _BRACE.search(spec)
    if not m:
        return [spec]
    a, b = m.group(1), m.group(2)
    width = len(a) if a.startswith("0") else 0
    out = []
    for i in range(int(a), int(b) + 1):
        out += _expand_braces(spec[:m.start()] + str(i).zfill(width) + spec[m.end():])
    return out


def _tar_paths(spec: str) -> list[Path]:
    p = Path(spec)
    if p.is_dir():
        return sorted(q for q in p.glob("*.tar") if not q.name.startswith("."))
    if _BRACE.search(spec) or any(ch in spec for ch in "*?["):
        names = []
        for s in _expand_braces(spec):
            names += sorted(glob.glob(s)) if any(ch in s for ch in "*?[") else [s]
        missing = [n for n in names if not Path(n).is_file()]
        if missing:
            raise KdataError(f"{spec}: shard {missing[0]} not found")
        return [Path(n) for n in names]
    return [p]


def _is_tar_pool(spec: str) -> bool:
    if spec.endswith(".tar") and (Path(spec).is_file() or _BRACE.search(spec) or "*" in spec):
        return True
    p = Path(spec)
    return p.is_dir() and any(p.glob("*.tar")) and not any(p.rglob("*.parquet")) and not has_images(p)


def _split_key(member: str) -> tuple[str, str]:
    """WebDataset convention: the key is everything before the first dot of the basename."""
    d, _, base = member.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{d}/{stem}" if d else stem), ext.lower()


def _tar_members(tf: tarfile.TarFile):
    """(member, key, ext) for the regular, non-hidden members of an open shard, in archive order."""
    for m in tf:
        if m.isfile() and not m.name.split("/")[-1].startswith("."):
            yield (m, *_split_key(m.name))


TAR_IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp")  # the first present is the sample's image


class TarRows(UnitRows):
    """A WebDataset shard's samples in archive order, by member offsets read once from its headers.

    The scan (``__init__``) reads headers only; an unreadable shard or a key repeated with one
    extension is one line. A member over the size cap, a key that is not UTF-8 or a sparse member
    keeps its sample as a row with the reason. Workers read their batch's members by offset."""

    def __init__(self, path: Path, *, limits: PoolLimits = DEFAULT_LIMITS):
        self.path, self.limits = Path(path), limits
        samples: dict[str, dict[str, tuple[int, int]]] = {}
        refused: dict[str, str] = {}
        try:
            with tarfile.open(path, "r:*") as tf:
                for m, key, ext in _tar_members(tf):
                    parts = samples.setdefault(key, {})
                    if ext in parts:
                        raise KdataError(f"{path}: key '{escaped(key)}' occurs twice (two '.{escaped(ext)}' "
                                         "members); keys must be unique within a shard")
                    parts[ext] = (m.offset_data, m.size)
                    if not is_utf8(key):
                        refused.setdefault(key, BAD_NAME.replace("file name", "key"))
                    if m.size > limits.max_file_bytes:
                        refused.setdefault(key, f"member {escaped(m.name)}: " + over_cap(m.size, limits))
                    elif m.issparse():
                        refused.setdefault(key, f"member {escaped(m.name)}: sparse tar member (not read)")
        except (OSError, tarfile.TarError, EOFError) as exc:
            raise KdataError(f"{path}: cannot read tar shard ({type(exc).__name__}: {exc})") from None
        self.keys = list(samples)
        self.image = [next((parts[e] for e in TAR_IMAGE_EXTS if e in parts), None) for parts in samples.values()]
        self.cls = [parts.get("cls") for parts in samples.values()]
        self.refused = [refused.get(k) for k in self.keys]
        self.num_rows = len(self.keys)

    def read_rows(self, start: int, stop: int) -> pa.Table:
        ids, images, labels, errors = [], [], [], []
        try:
            with tarfile.open(self.path, "r:*") as tf:
                fh = tf.fileobj  # the (decompressed) archive stream: member offsets index into it

                def member(where: tuple[int, int] | None) -> bytes | None:
                    if where is None:
                        return None
                    fh.seek(where[0])
                    return fh.read(where[1])

                for i in range(start, stop):
                    bad = self.refused[i]
                    img, cls = (None, None) if bad else (member(self.image[i]), member(self.cls[i]))
                    ids.append(escaped(self.keys[i]))
                    images.append(img)
                    labels.append(cls.decode("utf-8", "replace").strip() if cls is not None else None)
                    errors.append(bad)
        except (OSError, tarfile.TarError, EOFError) as exc:
            raise KdataError(f"{self.path}: cannot read tar shard ({type(exc).__name__}: {exc})") from None
        return _pool_table(ids, images, labels, source=self.path.name, errors=errors)


def read_tar(path: Path, *, limits: PoolLimits = DEFAULT_LIMITS) -> pa.Table:
    """One WebDataset shard → pool table, samples in archive order; one-line error when unreadable.

    Only regular members are read (links and devices inside the archive are skipped). A key that
    appears twice with the same extension stops the run: one of the two would be lost. A member
    over the size cap, or a key that is not UTF-8, quarantines its sample with the reason."""
    rows = TarRows(path, limits=limits)
    return rows.read_rows(0, rows.num_rows)


def tar_labels(path: Path, *, limits: PoolLimits = DEFAULT_LIMITS) -> set[str]:
    """The distinct ``.cls`` labels of a shard, reading no other member's bytes (an unreadable shard:
    none; reading it later gives the error)."""
    out: set[str] = set()
    try:
        with tarfile.open(path, "r:*") as tf:
            for m, key, ext in _tar_members(tf):
                if ext == "cls" and m.size <= min(limits.max_file_bytes, 1 << 16) and is_utf8(key):
                    fh = tf.extractfile(m)
                    label = (fh.read() if fh else b"").decode("utf-8", "replace").strip()
                    if label:
                        out.add(label)
    except (OSError, tarfile.TarError, EOFError):
        pass
    return out


def _check_shards(spec: str, paths: list[Path], *, limits: PoolLimits) -> None:
    """Every shard a regular file; under a directory spec, symlinks stay inside it (one line otherwise)."""
    root = Path(spec) if Path(spec).is_dir() else None
    root_real = os.path.realpath(root) if root is not None else ""
    for p in paths:
        if root is None:  # named by the user (a file, a brace or glob pattern): only its type matters
            reason = check_entry(p, root_real="", limits=PoolLimits(follow_symlinks=True))
            if reason is not None and not p.exists():
                reason = "not found"
        else:
            reason = check_entry(p, root_real=root_real, limits=limits)
        if reason is not None:
            raise KdataError(f"{p}: tar shard {reason}")


@register_reader(_is_tar_pool)
def open_tar(spec: str, *, limits: PoolLimits = DEFAULT_LIMITS) -> Pool:
    paths = _tar_paths(spec)
    if not paths:
        raise KdataError(f"{spec}: no .tar shards found")
    _check_shards(spec, paths, limits=limits)

    def unit(p: Path) -> PoolUnit:
        from kdata.core.atomic import sha256_file

        # keys are kept as written (the sample_id); a key repeated across shards is
        # reported by the pipeline's unique-id check, never silently renamed
        return PoolUnit(name=p.name, read=lambda: read_tar(p, limits=limits),
                        fingerprint=lambda: f"sha256:{sha256_file(p)}{limits.tag()}", path=str(p),
                        labels=lambda: tar_labels(p, limits=limits), rows=lambda: TarRows(p, limits=limits))

    return Pool(spec=spec, units=[unit(p) for p in paths],
                description=f"WebDataset tar pool at {spec} ({len(paths)} shard(s))", extra={"layout": "webdataset"})
