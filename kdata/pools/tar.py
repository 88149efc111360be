"""WebDataset tar shards: members ``<key>.<ext>`` grouped by key, one unit per shard. A shard is
named ``.tar`` or, compressed, ``.tar.gz``/``.tgz``/``.tar.bz2``/``.tbz2``/``.tar.xz``/``.txz``
(``SHARD_SUFFIXES``); its content decides how it is decompressed, whatever its name.

The image is the first of jpg/jpeg/png/webp/bmp present, the label the text of ``.cls`` (a class
name, or an index written as the class name, e.g. '3'); ``sample_id`` is the key. A shard's plan
(``TarRows``) holds member offsets read once from its headers, so a scoring worker reads only its
batch's members. The fingerprint is the shard's sha256 with the reader's version (``TAR_READER``:
a score cache entry records the reader's quarantine reasons, so a reader that reads a member
differently must not reuse it).

A shard is checked whole when it is planned: unreadable, cut short (Python's ``tarfile`` reads a
truncated header, or a missing end-of-archive marker, as a normal end), or a key repeated with one
extension stops the run with one line. A member that must not be read (over the size cap,
sparse, a link, a directory or a device where a sample's image or label should be) quarantines its
sample with the reason; links are never followed, inside the tar or out of it.

``tarfile`` reads a GNU long-name/long-link or PAX header whole before any member is seen, so
the archive stream it reads (``_Stream``: the shard, gzip/bz2/xz content decompressed here)
refuses a read over ``HEADER_MAX`` while headers are scanned, and a compressed shard that
expands past ``max(EXPAND_FLOOR, EXPAND_RATIO`` × its size on disk): one line naming the shard.
"""

from __future__ import annotations

import bz2
import contextlib
import glob
import gzip
import lzma
import os
import re
import tarfile
import zlib
from pathlib import Path

import pyarrow as pa

from kdata.core.errors import KdataError
from kdata.pools.base import DEFAULT_LIMITS, Pool, PoolLimits, PoolUnit, UnitRows, register_reader
from kdata.pools.files import check_entry, escaped, is_utf8, mib, over_cap
from kdata.pools.readers import BAD_NAME, has_images, pool_table

TAR_IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff", "ppm", "pgm")  # the first present is the image
SAMPLE_EXTS = (*TAR_IMAGE_EXTS, "cls")  # the members a sample is read from
TAR_READER = "tar-reader-v4"  # bump when a shard is read differently (v3: extended headers and expansion bounded;
#                               v4: a refused member's name last, in brackets)
END_OF_ARCHIVE = bytes(2 * tarfile.BLOCKSIZE)  # two zero blocks close every tar (POSIX; GNU tar and tarfile pad further)
_NOT_FILES = ((tarfile.TarInfo.issym, "a symlink"), (tarfile.TarInfo.islnk, "a hard link"),
              (tarfile.TarInfo.isdir, "a directory"), (tarfile.TarInfo.isfifo, "a FIFO"),
              (tarfile.TarInfo.ischr, "a character device"), (tarfile.TarInfo.isblk, "a block device"))

SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")  # gzip/bz2/xz by their bytes
HEADER_MAX = 64 << 10  # the most one header read may take (GNU long names and PAX records are far smaller)
EXPAND_FLOOR, EXPAND_RATIO = 256 << 20, 100  # a compressed shard expands to at most max(floor, ratio × on disk)
_MAGIC = ((b"\x1f\x8b", lambda f: gzip.GzipFile(fileobj=f, mode="rb")), (b"BZh", bz2.BZ2File),
          (b"\xfd7zXZ\x00", lzma.LZMAFile))  # what ``tarfile``'s "r:*" would decompress
_BROKEN = (OSError, tarfile.TarError, EOFError, zlib.error, lzma.LZMAError)  # what a damaged shard raises


class _Refused(Exception):
    """A read that ``_Stream`` will not do (its message names the problem, not the shard)."""


class _Stream:
    """The archive stream ``tarfile`` reads: the shard's bytes, decompressed here when gzip, bz2 or xz.

    One read takes at most ``max_read`` bytes (``tarfile`` reads an extended header whole: a
    declared size must not become an allocation), and a compressed shard is never expanded past
    ``limit`` (a few MiB must not stand for hours of decompression)."""

    def __init__(self, path: Path, *, max_read: int = HEADER_MAX):
        self._raw = open(path, "rb")  # noqa: SIM115  (closed by ``close``)
        head, size = self._raw.read(6), os.fstat(self._raw.fileno()).st_size
        self._raw.seek(0)
        opener = next((fn for magic, fn in _MAGIC if head.startswith(magic)), None)
        self._f = opener(self._raw) if opener else self._raw
        self.max_read = max_read
        self.limit = max(EXPAND_FLOOR, EXPAND_RATIO * size) if opener else None

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0 or n > self.max_read:
            raise _Refused(f"tar header declares {mib(n or 0)} of extended header (a GNU long name or PAX "
                           f"record), over the {self.max_read >> 10} KiB kdata reads in one header")
        data = self._f.read(n)
        self._check(self._f.tell())
        return data

    def seek(self, pos: int, whence: int = 0) -> int:
        if self.limit is not None and whence == 0 and pos > self.limit:
            self._f.seek(self.limit + 1)  # decompress up to the bound, no further
            self._check(self._f.tell())
        return self._f.seek(pos, whence)

    def tell(self) -> int:
        return self._f.tell()

    def close(self) -> None:
        self._f.close()
        self._raw.close()

    def _check(self, pos: int) -> None:
        if self.limit is not None and pos > self.limit:
            raise _Refused(f"compressed shard expands past {mib(self.limit)} ({EXPAND_RATIO}x its size on "
                           "disk): refused as a decompression bomb")


@contextlib.contextmanager
def _open_tar(path: Path, *, max_read: int = HEADER_MAX):
    """``tarfile`` over a ``_Stream`` of the shard (both closed on leaving)."""
    stream = _Stream(path, max_read=max_read)
    try:
        with tarfile.open(fileobj=stream, mode="r:") as tf:
            yield tf
    finally:
        stream.close()


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


def is_shard_name(name: str) -> bool:
    """A tar shard's name: ``.tar``, or a compressed tar (``SHARD_SUFFIXES``: read by content, not name)."""
    return name.lower().endswith(SHARD_SUFFIXES)


def _tar_paths(spec: str) -> list[Path]:
    p = Path(spec)
    if p.is_dir():
        return sorted(q for q in p.iterdir() if is_shard_name(q.name) and not q.name.startswith("."))
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
    if is_shard_name(spec) and (Path(spec).is_file() or _BRACE.search(spec) or "*" in spec):
        return True
    p = Path(spec)
    return p.is_dir() and any(is_shard_name(q.name) for q in p.iterdir()) and not any(p.rglob("*.parquet")) \
        and not has_images(p)


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


def _sample_member(m: tarfile.TarInfo) -> tuple[str, str] | None:
    """(key, ext) of a member that belongs to a sample, else None: hidden members, and members that
    are not regular files unless named like a sample's image or label (directory entries are skipped)."""
    if m.name.split("/")[-1].startswith("."):
        return None
    key, ext = _split_key(m.name)
    return (key, ext) if m.isfile() or ext in SAMPLE_EXTS else None


def _refusal(m: tarfile.TarInfo, limits: PoolLimits) -> str | None:
    """Why member ``m`` must not be read (a link, a directory or device, over the cap, sparse), or None."""
    if not m.isfile():
        what = next((kind for test, kind in _NOT_FILES if test(m)), f"of tar type {m.type.decode('latin-1')!r}")
        return f"tar member is {what}, not a file ({escaped(m.name)})"  # the name last: one kind per problem
    if m.size > limits.max_file_bytes:
        return "tar " + over_cap(m.size, limits, where=f"member {escaped(m.name)}")
    if m.issparse():
        return f"tar member is sparse, not read ({escaped(m.name)})"
    return None


def _check_end(tf: tarfile.TarFile, last: str | None, path: Path) -> None:
    """Refuse a shard whose last header is not followed by the end-of-archive marker (two zero
    blocks): ``tarfile`` ends quietly at a cut or damaged header, dropping every later sample."""
    fh = tf.fileobj  # the (decompressed) archive stream
    fh.seek(tf.offset)
    tail = fh.read(len(END_OF_ARCHIVE))
    if tail == END_OF_ARCHIVE:
        return
    after = f"after member {escaped(last)}" if last is not None else "before any member"
    if len(tail) >= tarfile.BLOCKSIZE and any(tail[:tarfile.BLOCKSIZE]):
        raise KdataError(f"{path}: damaged tar header at byte {tf.offset} ({after})")
    raise KdataError(f"{path}: truncated tar shard (no end-of-archive marker {after})")


def _unreadable(path: Path, exc: BaseException) -> KdataError:
    """One line (``tarfile`` lists each decompressor it tried on a line of its own)."""
    if isinstance(exc, _Refused):
        return KdataError(f"{path}: {exc}")
    return KdataError(f"{path}: cannot read tar shard ({type(exc).__name__}: {' '.join(str(exc).split())})")


class TarRows(UnitRows):
    """A WebDataset shard's samples in archive order, by member offsets read once from its headers.

    The scan (``__init__``) reads headers and the end-of-archive marker only; an unreadable or cut
    shard, or a key repeated with one extension, is one line. A member refused by ``_refusal`` or a
    key that is not UTF-8 keeps its sample as a row with the reason (and its label when the ``.cls``
    member is readable). Workers read their batch's members by offset."""

    def __init__(self, path: Path, *, limits: PoolLimits = DEFAULT_LIMITS):
        self.path, self.limits = Path(path), limits
        samples: dict[str, dict[str, tuple[int, int] | None]] = {}
        refused: dict[str, str] = {}
        try:
            with _open_tar(path) as tf:
                last = None
                for m in tf:
                    last, named = m.name, _sample_member(m)
                    if named is None:
                        continue
                    key, ext = named
                    parts = samples.setdefault(key, {})
                    if ext in parts:
                        raise KdataError(f"{path}: key '{escaped(key)}' occurs twice (two '.{escaped(ext)}' "
                                         "members); keys must be unique within a shard")
                    reason = _refusal(m, limits)
                    parts[ext] = (m.offset_data, m.size) if reason is None else None
                    if not is_utf8(key):
                        refused.setdefault(key, BAD_NAME.replace("file name", "key"))
                    if reason is not None:
                        refused.setdefault(key, reason)
                _check_end(tf, last, self.path)
        except (*_BROKEN, _Refused) as exc:
            raise _unreadable(path, exc) from None
        self.keys = list(samples)
        self.image = [next((parts[e] for e in TAR_IMAGE_EXTS if e in parts), None) for parts in samples.values()]
        self.cls = [parts.get("cls") for parts in samples.values()]
        self.refused = [refused.get(k) for k in self.keys]
        self.num_rows = len(self.keys)

    def sample_ids(self) -> pa.Array:
        return pa.array([escaped(k) for k in self.keys], pa.string())  # from the headers, as ``read_rows`` names them

    def read_rows(self, start: int, stop: int) -> pa.Table:
        return self._read(range(start, min(stop, self.num_rows)))

    def take(self, rows) -> pa.Table:
        return self._read([int(i) for i in rows])

    def read_column(self, name: str) -> pa.ChunkedArray | None:
        """``text``, ``domain`` and ``parent_id`` are null in a WebDataset shard: known without reading a member."""
        if name not in ("text", "domain", "parent_id"):
            return super().read_column(name)
        return pa.chunked_array([pa.nulls(self.num_rows, pa.string())])

    def _read(self, at) -> pa.Table:
        """The samples at positions ``at``, their members read by offset with the shard opened once."""
        ids, images, labels, errors = [], [], [], []
        try:
            with _open_tar(self.path, max_read=max(HEADER_MAX, self.limits.max_file_bytes)) as tf:
                fh = tf.fileobj  # the (decompressed) archive stream: member offsets index into it

                def member(where: tuple[int, int] | None) -> bytes | None:
                    if where is None:
                        return None
                    fh.seek(where[0])
                    return fh.read(where[1])

                for i in at:
                    bad = self.refused[i]
                    img, cls = (None if bad else member(self.image[i])), member(self.cls[i])
                    ids.append(escaped(self.keys[i]))
                    images.append(img)
                    labels.append(cls.decode("utf-8", "replace").strip() if cls is not None else None)
                    errors.append(bad)
        except (*_BROKEN, _Refused) as exc:
            raise _unreadable(self.path, exc) from None
        return pool_table(ids, images, labels, source=self.path.name, errors=errors)


def read_tar(path: Path, *, limits: PoolLimits = DEFAULT_LIMITS) -> pa.Table:
    """One WebDataset shard → pool table, samples in archive order; one-line error when unreadable or cut.

    A key that appears twice with the same extension stops the run: one of the two would be lost.
    A member that must not be read (see ``_refusal``), or a key that is not UTF-8, quarantines its
    sample with the reason."""
    rows = TarRows(path, limits=limits)
    return rows.read_rows(0, rows.num_rows)


def tar_labels(path: Path, *, limits: PoolLimits = DEFAULT_LIMITS) -> set[str]:
    """The distinct ``.cls`` labels of a shard, reading no other member's bytes (an unreadable shard:
    none; reading it later gives the error)."""
    out: set[str] = set()
    try:
        with _open_tar(path) as tf:
            for m, key, ext in _tar_members(tf):
                if ext == "cls" and m.size <= min(limits.max_file_bytes, 1 << 16) and is_utf8(key):
                    fh = tf.extractfile(m)
                    label = (fh.read() if fh else b"").decode("utf-8", "replace").strip()
                    if label:
                        out.add(label)
    except (*_BROKEN, _Refused):
        pass  # an unreadable or hostile shard: planning it names the problem
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
        raise KdataError(f"{spec}: no tar shards found ({', '.join('*' + x for x in SHARD_SUFFIXES)})")
    _check_shards(spec, paths, limits=limits)

    def unit(p: Path) -> PoolUnit:
        from kdata.core.digests import sha256_file_memo

        # keys are kept as written (the sample_id); a key repeated across shards is
        # reported by the pipeline's unique-id check, never silently renamed
        return PoolUnit(name=p.name, read=lambda: read_tar(p, limits=limits),
                        fingerprint=lambda: f"sha256:{sha256_file_memo(p)}{limits.tag()}:{TAR_READER}", path=str(p),
                        labels=lambda: tar_labels(p, limits=limits), rows=lambda: TarRows(p, limits=limits))

    return Pool(spec=spec, units=[unit(p) for p in paths],
                description=f"WebDataset tar pool at {spec} ({len(paths)} shard(s))", extra={"layout": "webdataset"})
