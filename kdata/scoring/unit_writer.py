"""Finished units written by a thread of their own while the scoring loop goes on (``WRITE_BEHIND``).

Writing a unit's cache entry (Parquet, then the quarantine JSON, then the lock released) took
about a tenth of the scoring thread's time on a GPU; on a thread of its own it overlaps the next
batches. Errors keep the order they would have had in turn: a failed write is raised to the
scoring loop at its next batch, and on a run's error path the units scored in full are still
written and an earlier unit's failed write stays the error the run ends with. After each write,
``trim_heap`` hands the C heap's free pages back to the system.
"""

from __future__ import annotations

import ctypes
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor


def libc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where the C library has none (musl, macOS, Windows)."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError, TypeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


MALLOC_TRIM = libc_trim()


def trim_heap() -> None:
    """Hand the C heap's free pages back to the system (a no-op without glibc).

    A CPU forward pass allocates tens of MB of transient buffers per batch; once glibc has freed one
    mmapped block it raises its mmap threshold (up to 32 MB), so later ones come from the heap, and
    their space ends up in holes between longer-lived blocks that glibc never returns by itself
    (it trims only the heap's top): a run's RSS grew by 10–20 KB per scored image while the bytes
    in use stayed flat. Called after each unit is written; it returns free pages only and moves
    nothing (about 1 ms per 2 MB returned, on the writing thread)."""
    if MALLOC_TRIM is not None:
        MALLOC_TRIM(0)


class UnitWriter:
    """``submit(state)`` runs ``write(state)`` on one writing thread (in order), or at once without one."""

    def __init__(self, write: Callable, *, behind: bool):
        self.write = write
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kdata-write-units") if behind else None
        self.writes: deque = deque()  # futures, oldest first
        self.raised: BaseException | None = None  # a failed write already raised to the scoring loop

    def submit(self, state) -> None:
        """Write ``state`` (behind, when there is a writing thread); raise a write that failed meanwhile."""
        if self.pool is None:
            self.write(state)
            return
        self.writes.append(self.pool.submit(self.write, state))
        self.check(block=False)

    def check(self, *, block: bool) -> None:
        """Raise the first failed write among those done (``block``: wait for each first)."""
        while self.writes and (block or self.writes[0].done()):
            f = self.writes.popleft()
            self.raised = f.exception()
            f.result()

    def close(self) -> None:
        """Wait for every write, raise the first that failed (those not started are then cancelled)."""
        try:
            self.check(block=True)
        finally:
            self.stop()

    def close_after(self, exc: BaseException) -> BaseException:
        """The run failed with ``exc``: wait for every write, then return the error the run ends
        with — an earlier unit's failed write (not already raised) rather than ``exc``."""
        first = None
        try:
            for f in self.writes:
                if first is None and f.exception() is not None:
                    first = f.exception()
        finally:
            self.writes.clear()
            self.stop()
        if first is not None and isinstance(exc, Exception) and exc is not self.raised:
            return first
        return exc

    def stop(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None
