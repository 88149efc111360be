"""One decode pipeline per process: DataLoader workers that start once and read their own bytes.

A run feeds a stream of ``BatchTask`` (unit, row range, the unit's small picklable plan) to one
``DataLoader`` with persistent workers (``DecodeService``); they start when the first task is
needed and stay up for every later unit and every later scoring call of the process (a flow's
per-unit tasks), so the worker start-up is paid once, not once per unit. Each task is one
model batch: rows ``[start, stop)`` of one unit, the same batches a per-unit loader would make,
so scores stay bit-identical. A worker reads the rows itself (``UnitRows.read_rows``: a file, a
tar member, a Parquet row range), decodes them and returns, per preprocessing key, the batch
normalised (CPU runs) or as uint8 pixels that the scoring process normalises on the GPU.

With ``gpu_jpeg`` a worker does not decode the JPEGs that nvJPEG can take: it returns their
bytes, and the scoring process decodes them in one batched call on the GPU
(``kdata.models.gpu_decode``). Everything else is decoded here, on the CPU, as without a GPU.
With ``cpu_share`` > 0 the workers also decode that share of those JPEGs themselves (rows picked
by their number in the unit, so a run's split does not depend on batching or worker count): CPU
cores that would otherwise wait take part of nvJPEG's serial host work (``cpu_jpeg_rows``).
"""

from __future__ import annotations

import atexit
import os
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from kdata.core.errors import KdataError
from kdata.models.images import (
    DEFAULT_MAX_PIXELS,
    decode_error,
    decode_multi_u8,
    gpu_jpeg_pixels,
    normalise,
    worker_context,
)

AUTO_MIN_ROWS = 2000  # below this many rows to decode, `--workers auto` decodes in-process (no start-up)
AUTO_MAX_CPU, AUTO_MAX_CUDA = 8, 12  # `auto` caps: CPU runs share the cores with the forward pass
GOLDEN = (5 ** 0.5 - 1) / 2  # a low-discrepancy step: any share of rows is spread evenly over a unit


def cpu_jpeg_rows(start: int, n: int, share: float) -> np.ndarray:
    """Which of unit rows ``[start, start + n)`` a worker decodes itself although nvJPEG could take
    them: about ``share`` of them, evenly spread (row r when frac(r · golden ratio) < share)."""
    if share <= 0:
        return np.zeros(n, dtype=bool)
    return (np.arange(start, start + n, dtype=np.float64) * GOLDEN) % 1.0 < share


@dataclass(frozen=True)
class BatchTask:
    """Rows ``[start, stop)`` of unit ``unit`` (a position in the run), read through ``rows``."""

    unit: int
    start: int
    stop: int
    rows: object  # kdata.pools.base.UnitRows (picklable)
    last: bool  # the unit's last batch: its scores can be written once this one is done


def check_workers(value) -> int | str:
    """``--workers``: ``auto`` or a whole number ≥ 0 (``"2"`` from a command line is 2); else one line."""
    if isinstance(value, str):
        v = value.strip().lower()
        if v == "auto":
            return "auto"
        if v.isdigit():
            return int(v)
    elif isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise KdataError(f"--workers {value}: expected auto or a whole number ≥ 0")


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def resolve_workers(value, *, rows: int, device: torch.device | str = "cpu") -> int:
    """``auto`` → a worker count: 0 below ``AUTO_MIN_ROWS`` rows (a worker's start costs more than it
    saves), else one core left to the scoring process and at most ``AUTO_MAX_CPU`` on a CPU run
    (decode competes with the forward pass for the cores), ``AUTO_MAX_CUDA`` with a GPU (workers
    only read bytes and decode what nvJPEG cannot). A number is returned as is."""
    value = check_workers(value)
    if value != "auto":
        return value
    if rows < AUTO_MIN_ROWS:
        return 0
    cap = AUTO_MAX_CUDA if torch.device(device).type == "cuda" else AUTO_MAX_CPU
    return max(0, min(available_cores() - 1, cap))


class FailedRows:
    """The plan of a unit that cannot be read (its reason): reading it reports the reason in order,
    after the units before it are finished and written, instead of aborting them mid-flight."""

    num_rows = 0

    def __init__(self, reason: str):
        self.reason = reason

    def read_rows(self, start: int, stop: int):
        raise KdataError(self.reason)

    def part(self, start: int, stop: int) -> FailedRows:
        return self


class TaskDecoder(Dataset):
    """``BatchTask`` → one decoded batch (a dict; see ``decode_task``). Runs in the workers."""

    def __init__(self, keys: list[tuple], *, max_pixels: int | None = DEFAULT_MAX_PIXELS, gpu_jpeg: bool = False,
                 normalised: bool = True, cpu_share: float = 0.0):
        self.keys, self.max_pixels, self.gpu_jpeg, self.normalised = keys, max_pixels, gpu_jpeg, normalised
        self.cpu_share = cpu_share

    def __getitem__(self, task: BatchTask) -> dict:
        return decode_task(task, self.keys, max_pixels=self.max_pixels, gpu_jpeg=self.gpu_jpeg,
                           normalised=self.normalised, cpu_share=self.cpu_share)


def decode_task(task: BatchTask, keys: list[tuple], *, max_pixels: int | None, gpu_jpeg: bool = False,
                normalised: bool = True, cpu_share: float = 0.0) -> dict:
    """Read and decode one task's rows. Row numbers in the result count from ``task.start``.

    Returns ``unit``, ``start``, ``stop``, ``last``, ``pid`` (the process that decoded it),
    ``ids`` and ``labels`` (every row), ``rows`` (decoded rows, ascending) with ``pixels``
    ({key: (n, C, H, W)}: float32 normalised, or uint8 with ``normalised=False`` — a quarter of
    the bytes to copy to a GPU, normalised there), ``jpeg_rows`` with ``jpegs`` (their raw bytes, for
    the GPU, end to end in one uint8 tensor — one shared-memory handle per batch, not one per image:
    per-image handles capped a 16-core H200 at about 2,000 images/s) cut at ``jpeg_offsets`` and
    ``jpeg_pixels`` (their sizes, from the headers), ``bad`` ([(row, error)]: quarantined), ``empty``
    (rows without any payload) — or ``fatal``: a one-line reason the unit cannot be read at all.
    ``cpu_share``: the share of nvJPEG's JPEGs decoded here all the same (``cpu_jpeg_rows``)."""
    head = {"unit": task.unit, "start": task.start, "stop": task.stop, "last": task.last, "pid": os.getpid()}
    try:
        table = task.rows.read_rows(task.start, task.stop)
    except KdataError as exc:
        return {**head, "fatal": str(exc)}
    images = table.column("image").to_pylist()
    errors = table.column("read_error").to_pylist() if "read_error" in table.column_names else [None] * len(images)
    rows, decoded, jpeg_rows, jpegs, jpeg_pixels, bad, empty = [], [], [], [], [], [], 0
    on_cpu = cpu_jpeg_rows(task.start, len(images), cpu_share if gpu_jpeg else 0.0).tolist()
    for j, (data, err) in enumerate(zip(images, errors)):
        if err:  # the pool reader could not read it: quarantined with its reason
            bad.append((j, err))
            continue
        empty += data is None
        if gpu_jpeg and not on_cpu[j] and (pixels := gpu_jpeg_pixels(data, max_pixels)):
            jpeg_rows.append(j)
            jpegs.append(data)
            jpeg_pixels.append(pixels)
            continue
        try:
            decoded.append(decode_multi_u8(data, keys, max_pixels=max_pixels))
        except Exception as exc:  # noqa: BLE001  (quarantined with its error, the run goes on)
            bad.append((j, decode_error(exc)))
            continue
        rows.append(j)
    pixels = {}
    for k in keys if decoded else ():
        if normalised:  # straight into the batch: no uint8 stack to copy first
            pixels[k] = torch.empty((len(decoded), *k[0]), dtype=torch.float32)
            for i, d in enumerate(decoded):
                normalise(d[k], k[1], k[2], out=pixels[k][i])
        else:
            pixels[k] = torch.stack([d[k] for d in decoded])
    return {**head, "ids": table.column("sample_id").to_pylist(), "labels": table.column("label").to_pylist(),
            "rows": torch.tensor(rows, dtype=torch.long), "pixels": pixels,
            "jpeg_rows": torch.tensor(jpeg_rows, dtype=torch.long), "jpeg_pixels": jpeg_pixels,
            "jpegs": torch.frombuffer(bytearray().join(jpegs), dtype=torch.uint8) if jpegs else torch.empty(0, dtype=torch.uint8),
            "jpeg_offsets": np.cumsum([0, *map(len, jpegs)]).tolist(),
            "bad": bad, "empty": empty}


class TaskStream:
    """A one-shot sampler: the DataLoader draws tasks from ``tasks`` lazily, in the main process,
    only as far ahead as its prefetch (so a unit is read, locked or skipped just in time)."""

    def __init__(self, tasks: Iterator[BatchTask]):
        self.tasks = tasks

    def __iter__(self) -> Iterator[BatchTask]:
        return self.tasks


class HeadFirst:
    """One task stream shared by the scoring process, while a cold run's workers start, and the
    workers after: ``head`` hands tasks to the process until the workers have taken their first
    one (or ``ready()``), under one lock, so every task the process decodes precedes every task the
    workers decode and the batches stay in order."""

    def __init__(self, tasks: Iterable[BatchTask]):
        self.tasks, self.lock, self.taken = iter(tasks), threading.Lock(), False

    def __iter__(self) -> Iterator[BatchTask]:
        return self

    def __next__(self) -> BatchTask:  # the DataLoader's draws
        with self.lock:
            self.taken = True
            return next(self.tasks)

    def head(self, *, ready, limit: int) -> Iterator[BatchTask]:
        """At most ``limit`` tasks for this process, none once ``ready()`` or the workers drew one."""
        for _ in range(limit):
            if ready():
                return
            with self.lock:
                task = None if self.taken else next(self.tasks, None)
            if task is None:
                return
            yield task


class DecodeService:
    """Decode workers kept up across the scoring calls of one process.

    A flow scores one pool unit per task (units are the grain of Prefect's caching and retries);
    without this, every task would start its own workers. The service's DataLoader has persistent
    workers: ``iterate(tasks)`` points its task stream at the next call's tasks and resumes the same
    processes. One call at a time (``lock``): concurrent tasks of a thread-pool runner take turns,
    which costs nothing since they would share the same cores. A call that fails ``discard``s it."""

    def __init__(self, keys: list[tuple], *, num_workers: int, pin: bool, max_pixels: int | None,
                 gpu_jpeg: bool, normalised: bool, prefetch: int = 2, cpu_share: float = 0.0):
        self.stream = TaskStream(iter(()))
        decoder = TaskDecoder(keys, max_pixels=max_pixels, gpu_jpeg=gpu_jpeg, normalised=normalised,
                              cpu_share=cpu_share)
        self.loader = DataLoader(decoder, batch_size=None, sampler=self.stream, num_workers=num_workers,
                                 collate_fn=_as_is, pin_memory=pin, prefetch_factor=prefetch,
                                 persistent_workers=True, multiprocessing_context=worker_context(num_workers))
        self.lock = threading.Lock()
        self.started = False

    def iterate(self, tasks: Iterable[BatchTask]) -> Iterator[dict]:
        """Decoded batches of ``tasks``, by this service's workers (started by the first call)."""
        self.stream.tasks = iter(tasks)
        it = iter(self.loader)
        self.started = True
        return it

    def close(self) -> None:
        it = getattr(self.loader, "_iterator", None)
        if it is not None:
            it._shutdown_workers()  # noqa: SLF001  (torch offers no public way to stop persistent workers)
            self.loader._iterator = None


_SERVICES: dict[tuple, DecodeService] = {}
_SERVICES_LOCK = threading.Lock()


def decode_service(keys: list[tuple], *, num_workers: int, pin: bool = False,
                   max_pixels: int | None = DEFAULT_MAX_PIXELS, gpu_jpeg: bool = False,
                   normalised: bool = True, cpu_share: float = 0.0) -> DecodeService:
    """This process's ``DecodeService`` for these settings (created on first use, then reused)."""
    key = (tuple(keys), num_workers, pin, max_pixels, gpu_jpeg, normalised, cpu_share)
    with _SERVICES_LOCK:
        if key not in _SERVICES:
            _SERVICES[key] = DecodeService(keys, num_workers=num_workers, pin=pin, max_pixels=max_pixels,
                                           gpu_jpeg=gpu_jpeg, normalised=normalised, cpu_share=cpu_share)
        return _SERVICES[key]


def close_services() -> None:
    """Stop every service's workers; registered to run at exit, so that they are stopped before the
    interpreter's teardown rather than during it."""
    with _SERVICES_LOCK:
        services = list(_SERVICES.values())
        _SERVICES.clear()
    for service in services:
        service.close()


atexit.register(close_services)


def discard_service(service: DecodeService) -> None:
    """Stop a service whose call failed (its workers may be mid-task or dead); the next call starts anew."""
    with _SERVICES_LOCK:
        for key in [k for k, v in _SERVICES.items() if v is service]:
            del _SERVICES[key]
    service.close()


def _as_is(item):
    return item
