"""Worker processes for dedup features (``kdata.dedup.features``), started once per run.

A hash and a 16×16 embedding cost about 0.5 ms an image, one image at a time: at 10M images that
is hours on one core while the others idle. ``FeatureWorkers`` maps small picklable tasks (a unit's
row plan and a row range, a shard's row group — never payload bytes where the rows can be read
from disk) over a ``ProcessPoolExecutor`` whose processes come from the fork server the decode
workers use (``kdata.models.images.worker_context``). The executor starts with the first task that
needs it, so a fully cached run starts nothing, and the same processes serve every unit of the run
until ``close``. Results come back in task order, so features are identical to the serial path's.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

# below this many rows `auto` computes in-process: a cold fork server (it preloads torch for the decode
# workers it also serves) takes 3-6 s to start on a busy machine, the serial time of ~10k rows' features
FEATURE_MIN_ROWS = 10_000


def resolve_feature_workers(value, *, rows: int) -> int:
    """``--workers`` for feature work: ``auto`` → 0 below ``FEATURE_MIN_ROWS`` rows (start-up costs more
    than it saves) or on one core, else every available core up to ``AUTO_MAX_CPU`` (the main process
    only waits); a number is returned as is."""
    from kdata.models.decode_pool import AUTO_MAX_CPU, available_cores, check_workers

    value = check_workers(value)
    if value != "auto":
        return value
    cores = available_cores()
    return 0 if rows < FEATURE_MIN_ROWS or cores < 2 else min(cores, AUTO_MAX_CPU)


def _call(fn: Callable, task) -> tuple[int, object]:
    """Runs in a worker: (this process's id, ``fn(task)``)."""
    return os.getpid(), fn(task)


class FeatureWorkers:
    """An ordered, bounded ``map`` over ``workers`` processes (0: in this process), kept for one run.

    ``pids`` holds, per ``map`` call, the ids of the processes that ran its tasks (tests check that a
    run's units share the same workers). ``ahead`` bounds the tasks in flight, so a slow consumer or
    an in-memory unit's copied rows never pile up."""

    def __init__(self, workers: int):
        self.workers = int(workers)
        self.pids: list[set[int]] = []
        self._executor = None

    @property
    def started(self) -> bool:
        """Whether worker processes are up (the first ``map`` that needs them starts them)."""
        return self._executor is not None

    def map(self, fn: Callable, tasks: Iterable, *, ahead: int | None = None, inline: bool = False) -> Iterator:
        """``fn(task)`` for each task, in order (``fn`` a module-level function, picklable by name);
        ``inline``: in this process all the same (work too cheap to ship)."""
        pids: set[int] = set()
        self.pids.append(pids)
        if inline or not self.workers:
            for task in tasks:
                pids.add(os.getpid())
                yield fn(task)
            return
        executor = self._start()
        pending: deque = deque()
        try:
            for task in tasks:
                pending.append(executor.submit(_call, fn, task))
                if len(pending) >= (ahead or 2 * self.workers):
                    yield self._take(pending, pids)
            while pending:
                yield self._take(pending, pids)
        finally:
            for f in pending:
                f.cancel()

    @staticmethod
    def _take(pending: deque, pids: set[int]):
        pid, result = pending.popleft().result()
        pids.add(pid)
        return result

    def _start(self):
        if self._executor is None:
            from concurrent.futures import ProcessPoolExecutor

            from kdata.models.images import worker_context

            self._executor = ProcessPoolExecutor(max_workers=self.workers, mp_context=worker_context(self.workers))
        return self._executor

    def close(self) -> None:
        """Stop the workers (pending tasks are cancelled); a later ``map`` starts new ones."""
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> FeatureWorkers:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@contextmanager
def feature_workers(value, *, rows: int) -> Iterator[FeatureWorkers]:
    """The run's ``FeatureWorkers``: ``value`` itself when it is one (its owner closes it), else new
    ones for ``--workers value`` (``resolve_feature_workers``), closed on leaving."""
    if isinstance(value, FeatureWorkers):
        yield value
        return
    with FeatureWorkers(resolve_feature_workers(value, rows=rows)) as fw:
        yield fw
