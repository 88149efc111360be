"""Readers for image pools on disk: ImageFolder trees, flat folders (+ ``labels.csv``), WebDataset tars.

Each reader turns a spec into a ``Pool`` of units of bounded size (``UNIT_FILES`` files per unit
for folders, one unit per tar shard), each with a content fingerprint (relative paths, labels and
the sha256 of every file's bytes), so the score cache is invalidated exactly when content changes.

``sample_id`` is the file's path relative to POOL (POSIX separators) for folders and the sample
key for tars. Two files with identical bytes stay two samples: duplicates are dedup's business.
Images are read as raw bytes here and decoded later in DataLoader workers, where a corrupt,
truncated or empty file is quarantined with its error.
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

from kdata.dataset.schema import POOL_SCHEMA
from kdata.core.errors import KdataError
from kdata.pools.base import Pool, PoolUnit, register_reader

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
UNIT_FILES = 1000  # files per unit of a folder pool: the grain of caching and fan-out
LABELS_CSV = "labels.csv"


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTS)


def _pool_table(ids: list[str], images: list[bytes | None], labels: list[str | None], *, source: str) -> pa.Table:
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
    }, schema=POOL_SCHEMA)


def _read_bytes(path: Path) -> bytes | None:
    """File bytes, or None when unreadable (the sample is then quarantined at decode)."""
    try:
        return path.read_bytes()
    except OSError:
        return None


# ------------------------------------------------------------------------------------------------
# Folders: ImageFolder layout (POOL/<label>/<file>) and flat folders with an optional labels.csv

def _list_images(root: Path) -> list[str]:
    """Relative POSIX paths of the image files under ``root``, sorted; hidden entries skipped."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel = Path(dirpath).relative_to(root)
        for f in filenames:
            if not f.startswith(".") and _is_image(f):
                out.append((rel / f).as_posix())
    return sorted(out)


def _has_images(root: Path, *, depth: int = 2) -> bool:
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
        return any(e.is_dir() and not e.name.startswith(".") and _has_images(Path(e.path), depth=depth - 1)
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


def _folder_unit(root: Path, files: list[str], labels: list[str | None], *, name: str, source: str) -> PoolUnit:
    memo: dict[str, str] = {}

    def read() -> pa.Table:
        return _pool_table(files, [_read_bytes(root / f) for f in files], labels, source=source)

    def fingerprint() -> str:
        if "fp" not in memo:
            h = hashlib.sha256(b"kdata-folder-unit-v1\0")
            for f, lab in zip(files, labels):
                data = _read_bytes(root / f)
                digest = hashlib.sha256(data).hexdigest() if data is not None else "unreadable"
                h.update(f"{f}\0{lab}\0{digest}\0".encode())
            memo["fp"] = "sha256:" + h.hexdigest()
        return memo["fp"]

    return PoolUnit(name=name, read=read, fingerprint=fingerprint, path=str(root))


def _is_image_folder(spec: str) -> bool:
    p = Path(spec)
    return p.is_dir() and _has_images(p) and not any(p.rglob("*.parquet"))


@register_reader(_is_image_folder)
def open_image_folder(spec: str, *, unit_files: int = UNIT_FILES) -> Pool:
    """An ImageFolder tree (label = top folder name) or a flat folder (labels from ``labels.csv``)."""
    root = Path(spec)
    files = _list_images(root)
    csv_labels = _read_labels_csv(root / LABELS_CSV) if (root / LABELS_CSV).is_file() else None
    if csv_labels is not None:
        unknown = sorted(set(csv_labels) - set(files))
        if unknown:
            raise KdataError(f"{root / LABELS_CSV}: lists {len(unknown)} file(s) not in the pool, "
                             f"e.g. '{unknown[0]}'")
    labels: list[str | None] = []
    for f in files:
        if csv_labels is not None and f in csv_labels:
            labels.append(csv_labels[f])
        elif "/" in f:
            labels.append(f.split("/", 1)[0])  # ImageFolder: the top folder is the (web) label
        else:
            labels.append(None)
    folders = sorted({f.split("/", 1)[0] for f in files if "/" in f})
    if csv_labels is not None:
        class_names = sorted({lab for lab in labels if lab is not None})
        layout = "flat folder + labels.csv" if not folders else "folder + labels.csv"
    else:
        class_names = folders or None
        layout = "ImageFolder" if folders else "flat folder (no labels)"
    units = []
    for i in range(0, len(files), unit_files):
        chunk = files[i:i + unit_files]
        units.append(_folder_unit(root, chunk, labels[i:i + unit_files], name=f"{chunk[0]}..{chunk[-1]}",
                                  source=root.name))
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
    return p.is_dir() and any(p.glob("*.tar")) and not any(p.rglob("*.parquet")) and not _has_images(p)


def _split_key(member: str) -> tuple[str, str]:
    """WebDataset convention: the key is everything before the first dot of the basename."""
    d, _, base = member.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{d}/{stem}" if d else stem), ext.lower()


def read_tar(path: Path) -> pa.Table:
    """One WebDataset shard → pool table, samples in archive order; one-line error when unreadable."""
    samples: dict[str, dict[str, bytes]] = {}
    try:
        with tarfile.open(path, "r:*") as tf:
            for m in tf:
                if not m.isfile() or m.name.split("/")[-1].startswith("."):
                    continue
                key, ext = _split_key(m.name)
                fh = tf.extractfile(m)
                samples.setdefault(key, {})[ext] = fh.read() if fh else b""
    except (OSError, tarfile.TarError, EOFError) as exc:
        raise KdataError(f"{path}: cannot read tar shard ({type(exc).__name__}: {exc})") from None
    ids, images, labels = [], [], []
    for key, parts in samples.items():
        img = next((parts[e] for e in ("jpg", "jpeg", "png", "webp", "bmp") if e in parts), None)
        cls = parts.get("cls")
        ids.append(key)
        images.append(img)
        labels.append(cls.decode("utf-8", "replace").strip() if cls is not None else None)
    return _pool_table(ids, images, labels, source=path.name)


@register_reader(_is_tar_pool)
def open_tar(spec: str) -> Pool:
    paths = _tar_paths(spec)
    if not paths:
        raise KdataError(f"{spec}: no .tar shards found")
    for p in paths:
        if not p.is_file():
            raise KdataError(f"{p}: tar shard not found")

    def unit(p: Path) -> PoolUnit:
        from kdata.core.atomic import sha256_file

        # keys are kept as written (the sample_id); a key repeated across shards is
        # reported by the pipeline's unique-id check, never silently renamed
        return PoolUnit(name=p.name, read=lambda: read_tar(p), fingerprint=lambda: f"sha256:{sha256_file(p)}",
                        path=str(p))

    return Pool(spec=spec, units=[unit(p) for p in paths],
                description=f"WebDataset tar pool at {spec} ({len(paths)} shard(s))", extra={"layout": "webdataset"})
