"""Exclusive locks on output directories and cache entries: one writer at a time, never a wait in silence.

``exclusive(target)`` takes an ``fcntl.flock`` lock on ``.<name>.kdata-lock`` beside ``target``
and records the holder in it (pid, host, start time, command). A second taker fails at once with
one line naming the holder (``wait=True`` blocks instead: for cache entries, where the second
writer should reuse the first one's result). The kernel drops the lock when its holder exits,
even on SIGKILL, so a lock is never stale; whatever a dead holder left behind can be recognised
as stale by anyone who then takes the lock.

The lock file is removed on release. That is race-free because a taker re-checks, once it holds
the lock, that the file it locked is still the one at the path (the usual flock-and-unlink
protocol); otherwise it retries on the new file. Within one process the lock is re-entrant for
the thread holding it (the pipeline holds OUT for a whole run and the writer asks again);
another thread of the same process conflicts like another process.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from kdata.core.errors import KdataError

LOCK_SUFFIX = ".kdata-lock"

_HELD: dict[Path, Lock] = {}  # lock file -> the Lock this process holds on it
_MUTEX = threading.Lock()


def lock_path(target: str | os.PathLike) -> Path:
    """The lock file of ``target``: ``.<name>.kdata-lock`` in the same directory, symlinks resolved
    (every spelling of one directory shares one lock)."""
    t = Path(target).resolve()
    return t.parent / f".{t.name}{LOCK_SUFFIX}"


@dataclass
class Lock:
    """An exclusive lock this process holds on ``target`` (see the module doc)."""

    target: Path
    path: Path
    holder: dict
    fd: int | None = field(default=None, repr=False)
    thread: int = 0
    depth: int = 1

    @property
    def held(self) -> bool:
        return self.fd is not None

    def covers(self, target: str | os.PathLike) -> bool:
        """True when this held lock is the lock of ``target``."""
        return self.held and lock_path(target) == self.path

    def release(self) -> None:
        """Give the lock back (the outermost release of a re-entered lock does); idempotent."""
        with _MUTEX:
            if self.fd is None:
                return
            self.depth -= 1
            if self.depth > 0:
                return
            _HELD.pop(self.path, None)
            fd, self.fd = self.fd, None
        try:
            if _same_file(fd, self.path):
                os.unlink(self.path)  # while still locked: see the module doc
        except OSError:
            pass
        finally:
            os.close(fd)  # closing the last descriptor drops the flock

    def __enter__(self) -> Lock:  # noqa: PYI034
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def acquire(target: str | os.PathLike, *, wait: bool = False) -> Lock:
    """Take the exclusive lock of ``target``; raise ``KdataError`` naming the holder when it is taken
    (or block until it is free with ``wait=True``). Release with ``Lock.release()``."""
    path = lock_path(target)
    with _MUTEX:
        mine = _HELD.get(path)
        if mine is not None and mine.thread == threading.get_ident():
            mine.depth += 1
            return mine
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise KdataError(f"{path.parent}: cannot create the directory ({exc.strerror})") from None
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise KdataError(f"{path}: cannot create the lock file ({exc.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise KdataError(f"{path}: cannot lock ({exc.strerror})") from None
            raise KdataError(f"{Path(target)}: in use by another kdata run "
                             f"({describe(read_holder(path))}); wait for it to finish or use another directory") \
                from None
        if _same_file(fd, path):
            break
        os.close(fd)  # its holder removed the file on release: lock the new one
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "started_unix": round(time.time(), 3),
              "started": time.strftime("%Y-%m-%d %H:%M:%S %z"), "argv": [os.path.basename(a) for a in sys.argv[:1]]
              + sys.argv[1:8]}
    try:  # who holds it, for the message a second run prints; a full disk leaves it unrecorded
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
    except OSError:
        pass  # the flock holds all the same, and release() still removes the file
    lock = Lock(target=Path(target).resolve(), path=path, holder=holder, fd=fd,
                thread=threading.get_ident())
    with _MUTEX:
        _HELD[path] = lock
    return lock


@contextmanager
def exclusive(target: str | os.PathLike, *, wait: bool = False) -> Iterator[Lock]:
    """``with exclusive(OUT) as lock:`` hold the lock of ``OUT`` for the block (see ``acquire``)."""
    lock = acquire(target, wait=wait)
    try:
        yield lock
    finally:
        lock.release()


def current(target: str | os.PathLike) -> Lock | None:
    """The lock the calling thread holds on ``target``, or None (a lock held by another thread of
    this process is not ours to use: taking it conflicts, as with another process)."""
    with _MUTEX:
        lock = _HELD.get(lock_path(target))
    return lock if lock is not None and lock.thread == threading.get_ident() else None


def is_locked(target: str | os.PathLike) -> bool:
    """Whether some process (this one included) holds the lock of ``target`` right now."""
    path = lock_path(target)
    with _MUTEX:
        if path in _HELD:
            return True
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


def read_holder(path: str | os.PathLike) -> dict | None:
    """The holder recorded in a lock file (None when unreadable, e.g. just being written)."""
    for _ in range(20):
        try:
            text = Path(path).read_text()
            return json.loads(text)
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            time.sleep(0.01)
    return None


def describe(holder: dict | None) -> str:
    """``pid 1234 on host-a, started 2025-06-01 12:00:03 +0000 (40 s ago)`` or a fallback."""
    if not holder:
        return "holder unknown: the lock was just taken"
    ago = time.time() - float(holder.get("started_unix", time.time()))
    return (f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, started {holder.get('started', '?')} "
            f"({ago:.0f} s ago)")


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path, follow_symlinks=False)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)
