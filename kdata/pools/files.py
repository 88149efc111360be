"""Reading pool files defensively: regular files only, symlinks kept inside the pool, a size cap.

A pool on disk is often scraped from the web or assembled by scripts, so a name ending in
``.png`` may be a FIFO (``open`` blocks until a writer appears), a symlink to ``/dev/zero``
(``read`` never ends), a file far larger than any image, or a name that is not valid UTF-8
(Arrow strings must be). Each file is opened without blocking and checked on the open
descriptor — the check and the read see the same file — then read up to the cap. Every refusal
is a short reason; the reader quarantines the sample with it and the run goes on.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from kdata.pools.base import PoolLimits

_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory"))


def is_utf8(name: str) -> bool:
    """False for names holding bytes that are not UTF-8 (Python keeps them as surrogate escapes)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def escaped(name: str) -> str:
    """``name`` as valid UTF-8, undecodable bytes written as backslash escapes (``bad\\xff.png``)."""
    return os.fsencode(name).decode("utf-8", "backslashreplace") if not is_utf8(name) else name


def kind_of(mode: int) -> str:
    return next((what for test, what in _KINDS if test(mode)), "not a regular file")


def mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def over_cap(n: int | None, limits: PoolLimits, *, where: str | None = None) -> str:
    """The reason a payload over the size cap is not read: what differs from row to row (``where``, the
    size) in the trailing brackets, so every such row is one kind of error in ``quarantined_by_reason``."""
    detail = "; ".join(x for x in (where, mib(n) if n is not None else None) if x)
    return f"file is over the {limits.max_file_mb:g} MiB cap per file (--max-file-mb{'; ' + detail if detail else ''})"


def is_inside(real: str, root_real: str) -> bool:
    """Whether the resolved path ``real`` is ``root_real`` or below it."""
    return real == root_real or real.startswith(root_real.rstrip(os.sep) + os.sep)


def outside(path: Path, root_real: str) -> str | None:
    """The symlink target of ``path`` when ``path`` is a symlink leading outside ``root_real``, else None."""
    if not path.is_symlink():
        return None
    target = os.path.realpath(path)
    return None if is_inside(target, root_real) else target


def check_entry(path: Path, *, root_real: str, limits: PoolLimits) -> str | None:
    """Why ``path`` (found under a pool root) must not be read, or None: a symlink leaving the pool
    without ``follow_symlinks``, or anything that is not a regular file. Used for whole files
    (Parquet, tar shards) that a run refuses outright rather than quarantining."""
    if not limits.follow_symlinks:
        target = outside(path, root_real)
        if target is not None:
            return f"symlink to {escaped(target)}, outside the pool (--follow-symlinks reads it)"
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        return f"cannot read ({exc.strerror})"
    return None if stat.S_ISREG(mode) else f"{kind_of(mode)}, not a regular file"


def read_capped(path: Path, *, root_real: str, limits: PoolLimits) -> tuple[bytes | None, str | None]:
    """(bytes, None), or (None, reason) when ``path`` must not or cannot be read."""
    reason = check_entry(path, root_real=root_real, limits=limits)
    if reason is not None:
        return None, reason
    cap = limits.max_file_bytes
    try:  # O_NONBLOCK: a FIFO swapped in after the check still cannot block the open
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        return None, f"cannot read ({exc.strerror})"
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None, f"{kind_of(st.st_mode)}, not a regular file"
        if st.st_size > cap:
            return None, over_cap(st.st_size, limits)
        chunks, n = [], 0
        while n <= cap:  # bounded even when the size lies (files in /proc report 0)
            b = os.read(fd, min(1 << 20, cap + 1 - n))
            if not b:
                break
            chunks.append(b)
            n += len(b)
        if n > cap:
            return None, over_cap(None, limits)
        return b"".join(chunks), None
    except OSError as exc:
        return None, f"cannot read ({exc.strerror})"
    finally:
        os.close(fd)
