"""Where a scoring run spends its time: host seconds per stage and, on CUDA, device seconds per stage.

Opt-in and off by default (one context-variable lookup per stage when off)::

    with stage_clock() as clock:
        score_pool(pool, teacher, student, device="cuda")
    clock.summary()   # {"forward": {"calls": 48, "host_s": 0.21, "device_s": 2.9}, ...}

A ``ScoringRun`` picks up the clock active when it is created and times its stages with it (from any
of its threads): ``wait_for_batch`` (the loop blocked on the decode workers, or decoding itself with
none), ``inputs`` (pixels to the device; on CUDA with ``inputs/nvjpeg`` and ``inputs/preprocess``
inside it), ``forward`` (teacher, student, statistics), ``to_host`` (results queued for the host),
``wait_for_device`` (the host blocked until a batch's results are back) and ``write_unit``.
``host_s`` is wall time on the calling thread; ``device_s`` is the time the device's stream spent
between two CUDA events recorded around the stage — its kernels plus any gap in which the device
waited for the host — so a stage whose ``device_s`` is far above its ``host_s`` is device-bound.
``benchmarks/score.py --stages`` prints the table.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from contextlib import contextmanager, nullcontext
from contextvars import ContextVar

import torch

_ACTIVE: ContextVar[StageClock | None] = ContextVar("kdata_stage_clock", default=None)


class StageClock:
    """Per-stage call counts, host seconds and (CUDA) device seconds; safe to use from several threads."""

    def __init__(self):
        self._lock = threading.Lock()
        self.calls: dict[str, int] = defaultdict(int)
        self.host_s: dict[str, float] = defaultdict(float)
        self._events: dict[str, list] = defaultdict(list)

    @contextmanager
    def stage(self, name: str, device: torch.device | None = None):
        """Time the block as stage ``name``; with a CUDA ``device``, also on that device's current stream."""
        events = None
        if device is not None and device.type == "cuda":
            events = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
            events[0].record(torch.cuda.current_stream(device))
        t0 = time.perf_counter()
        try:
            yield
        finally:
            dt = time.perf_counter() - t0
            if events is not None:
                events[1].record(torch.cuda.current_stream(device))
            with self._lock:
                self.calls[name] += 1
                self.host_s[name] += dt
                if events is not None:
                    self._events[name].append(events)

    def summary(self) -> dict[str, dict]:
        """{stage: {calls, host_s[, device_s]}} in the order stages were first seen (waits for the device)."""
        with self._lock:
            out = {}
            for name in self.calls:
                row = {"calls": self.calls[name], "host_s": self.host_s[name]}
                events = self._events.get(name)
                if events:
                    events[-1][1].synchronize()
                    row["device_s"] = sum(a.elapsed_time(b) for a, b in events) / 1000.0
                out[name] = row
            return out


@contextmanager
def stage_clock():
    """Activate a fresh ``StageClock`` for the scoring runs created inside the block; yields it."""
    clock = StageClock()
    token = _ACTIVE.set(clock)
    try:
        yield clock
    finally:
        _ACTIVE.reset(token)


def active_clock() -> StageClock | None:
    """The clock of the enclosing ``stage_clock()`` block, or None."""
    return _ACTIVE.get()


def timed(clock: StageClock | None, name: str, device: torch.device | None = None):
    """``clock.stage(name, device)``, or a no-op context without a clock."""
    return nullcontext() if clock is None else clock.stage(name, device)


_END = object()


def timed_iter(clock: StageClock | None, name: str, items):
    """``items`` in turn, each wait for the next one timed as stage ``name`` (the last wait, which
    finds the end, too)."""
    it = iter(items)
    while True:
        with timed(clock, name):
            item = next(it, _END)
        if item is _END:
            return
        yield item
