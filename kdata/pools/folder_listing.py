"""Listing an image folder: which files are samples, which directory links are not followed, what is ignored.

Folders are walked without following directory symlinks, each directory by its real path once,
so a sample's class is always the folder it really lies in. A directory symlink is never read as
a second copy of a folder: one that leads inside the pool (an alias of a folder read under its own
name, or of the pool itself), one that leads outside without ``--follow-symlinks``, and one whose
target was already read (through another link) is listed as one row under the link's path, which
the reader quarantines with the reason and the target. With ``--follow-symlinks``, a link leading
outside the pool is read as a folder of the pool (the first one reaching a target reads it).
Files that are not images (by extension) are counted by extension, not read.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from kdata.core.errors import KdataError
from kdata.pools.files import escaped, is_inside

# what Pillow decodes among kdata's readable formats (``kdata.models.pixels.READABLE_FORMATS``), by extension
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm")


def is_image(name: str) -> bool:
    """Whether a file name has an image extension (any case)."""
    return name.lower().endswith(IMAGE_EXTS)


@dataclass
class Listing:
    """``files``: relative POSIX paths of the samples, sorted (image files, and the directory links not
    followed); ``skipped``: {link path: why it is not followed}; ``ignored``: {extension: files} of the
    files that are not images (``(none)`` for names without one)."""

    files: list[str]
    skipped: dict[str, str] = field(default_factory=dict)
    ignored: dict[str, int] = field(default_factory=dict)


def list_folder(root: Path, *, follow_symlinks: bool = False, own: tuple[str, ...] = ()) -> Listing:
    """The listing of ``root`` (hidden entries skipped; ``own``: top-level files that belong to the
    reader, such as ``labels.csv``, neither samples nor ignored). An unlistable directory is one line."""
    root = Path(root)
    root_real = os.path.realpath(root)
    files, skipped, ignored = [], {}, Counter()
    read_as = {root_real: "."}  # real directory → the path it was read under
    stack = [(root, "", False)]  # (path, relative path, reached through a directory link)
    while stack:
        path, rel, via_link = stack.pop()
        below = []
        for entry in _scan(path):
            name = entry.name
            child = f"{rel}/{name}" if rel else name
            if name.startswith(".") or (not rel and name in own):
                continue
            if _entry_is(entry, "dir"):
                link = entry.is_symlink()
                real = os.path.realpath(entry.path)
                why = _not_followed(real, link=link, via_link=via_link, follow=follow_symlinks,
                                    root_real=root_real, read_as=read_as)
                if why is not None:
                    files.append(child)
                    skipped[child] = why
                    continue
                read_as[real] = child
                below.append((Path(entry.path), child, via_link or link))
            elif is_image(name):
                files.append(child)
            else:
                ignored[escaped(os.path.splitext(name)[1].lower()) or "(none)"] += 1
        stack.extend(reversed(below))  # depth first, in name order
    return Listing(sorted(files), skipped, dict(sorted(ignored.items(), key=lambda kv: (-kv[1], kv[0]))))


def _not_followed(real: str, *, link: bool, via_link: bool, follow: bool, root_real: str,
                  read_as: dict[str, str]) -> str | None:
    """Why a directory (a symlink when ``link``) is listed as a row instead of read, or None to read it.

    The variable part (target, where it was read) is the trailing bracket, so each is one kind of
    quarantine error (``kdata.dataset.decisions.quarantine_kind``)."""
    if (link or via_link) and is_inside(real, root_real):
        where = escaped(os.path.relpath(real, root_real).replace(os.sep, "/"))
        if not link:  # a folder of the pool met again inside a followed link's target
            return f"folder of the pool reached again through a directory symlink, not read twice (target {where})"
        return ("directory symlink to a folder of the pool, not followed: that folder is read under its own name "
                f"(target {where})")
    if link and not follow:
        return f"directory symlink outside the pool, not followed (--follow-symlinks reads it; target {escaped(real)})"
    if real in read_as:
        return (f"directory {'symlink ' if link else ''}to a folder already read, not read twice "
                f"(target {escaped(real)}; read as {escaped(read_as[real])})")
    return None


def _scan(path: Path) -> list[os.DirEntry]:
    """The entries of directory ``path`` in name order; an unlistable one is one line."""
    try:
        with os.scandir(path) as it:
            return sorted(it, key=lambda e: e.name)
    except OSError as exc:  # os.walk would skip an unreadable directory silently
        raise KdataError(f"{escaped(str(exc.filename or path))}: cannot list the directory ({exc.strerror})") from None


def _entry_is(entry: os.DirEntry, kind: str) -> bool:
    """``entry.is_file()`` / ``is_dir()`` (following links), False when that cannot be told: a symlink
    loop, say (ELOOP), which the listing keeps and the read quarantines with its error."""
    try:
        return entry.is_file() if kind == "file" else entry.is_dir()
    except OSError:
        return False


def has_images(root: Path, *, depth: int | None = None) -> bool:
    """True when ``root`` holds an image file at any depth (within ``depth`` levels, the top being 1):
    a cheap probe that stops at the first one. Hidden entries are skipped; directory links are looked
    through (the listing decides what is read), each real directory once."""
    seen: set[str] = set()
    stack = [(Path(root), 1)]
    while stack:
        path, level = stack.pop()
        real = os.path.realpath(path)
        if real in seen:
            continue
        seen.add(real)
        try:
            with os.scandir(path) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            continue
        if any(is_image(e.name) and not e.name.startswith(".") and _entry_is(e, "file") for e in entries):
            return True
        if depth is None or level < depth:
            stack.extend((Path(e.path), level + 1) for e in reversed(entries)
                         if not e.name.startswith(".") and _entry_is(e, "dir"))
    return False
