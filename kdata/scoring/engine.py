"""The scoring run: one decode pipeline over every uncached unit, forward passes, per-unit results.

``ScoringRun`` drives ``kdata.models.decode_pool``: a lazy task stream (in this process) walks the
units in order, skips cached ones, locks the cache entry of each unit it feeds and cuts it into
batches; one DataLoader (workers started once per process, ``DecodeService``) decodes them; the loop below forwards each batch,
computes the statistics on the scoring device and hands each unit, once its last batch is in, to
``on_unit`` (write the cache entry, release the lock) on a thread of its own (``WRITE_BEHIND``), while
the next batches are scored; a run returns once every unit it scored is written. A crash loses at
most the units in flight.

On CUDA: JPEGs decoded by nvJPEG in batches (``kdata.models.gpu_decode``), pinned host memory and
non-blocking copies, and one batch in flight — batch k+1 is launched while batch k's results come
back. With decode workers, each batch's model inputs (nvJPEG decode, resize, normalise) are made
up to ``PREPARE_AHEAD`` batches ahead by ``PREPARE_THREADS`` threads, each on a CUDA stream of its
own (``ScoringRun.prepare_ahead``), so nvJPEG's host phase and the preprocessing's kernel launches
overlap the forward pass: on an H200, 8,561 samples/s against 6,679 in turn (docs/gpu.md;
``benchmarks/score.py --variants`` measures the settings).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import itertools
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from kdata.core.errors import KdataError, RuntimeFailure
from kdata.core.exact_probs import exact_columns, keeps_logits
from kdata.core.stats import disagreement
from kdata.models.decode_pool import BatchTask, FailedRows, HeadFirst, decode_service, decode_task, discard_service
from kdata.models.gpu_decode import decode_jpegs, gpu_decodable, preprocess
from kdata.models.images import decode_error, decode_multi_u8, normalise, to_device
from kdata.scoring.stage_clock import active_clock, timed, timed_iter
from kdata.scoring.unit_state import UnitState
from kdata.scoring.unit_writer import UnitWriter, trim_heap

PREPARE_AHEAD = 3  # CUDA with decode workers: batches whose inputs are made ahead on threads of their own (0: in turn)
PREPARE_THREADS = 2  # threads making inputs ahead (each on a CUDA stream of its own)
CPU_JPEG_SHARE = 0.0  # CUDA: share of nvJPEG's JPEGs the decode workers decode on the CPU instead
WRITE_BEHIND = True  # finished units written by a thread of their own while the next batches are scored
HEAD_BATCHES = 256  # batches a cold run decodes in this process at most while its workers start
GPU_DECODE_PIXELS = 1 << 28  # decoded pixels per nvJPEG call: ≤ 805 MB of RGB, whatever the images' sizes


def started(future: concurrent.futures.Future) -> Iterator[dict]:
    """The batches of a DataLoader iterator being started on another thread (waits for it). Workers that
    died because the fork server re-ran a script without a ``__main__`` guard: one line saying so."""
    from kdata.core.main_guard import HINT, unguarded_script

    try:
        yield from future.result()
    except RuntimeError as exc:
        script = unguarded_script() if "exited unexpectedly" in str(exc) else None
        if script is None:
            raise
        raise RuntimeFailure(f"{script}: decode workers stopped ({exc}); {HINT}") from None


def pixel_chunks(pixels: list[int], budget: int) -> list[list[int]]:
    """Consecutive index runs whose pixel counts sum to at most ``budget`` (a larger image: alone)."""
    chunks, run, total = [], [], 0
    for i, n in enumerate(pixels):
        if run and total + n > budget:
            chunks.append(run)
            run, total = [], 0
        run.append(i)
        total += n
    return chunks + ([run] if run else [])


@dataclass
class Ready:
    """A batch's model inputs made ahead on the preparing thread's stream (``event``: when they are done)."""

    x: dict
    rows: list
    bad: list
    event: object | None  # CUDA event on the preparing stream (None on a CPU)


@dataclass
class Pending:
    """A batch whose results are on their way back from the device."""

    state: UnitState
    rows: np.ndarray
    results: dict
    event: object | None
    last: bool


class ScoringRun:
    """Score a stream of units with one teacher and one student (see the module doc).

    ``plans(i)`` gives unit i's ``UnitRows``; ``claim(state)`` is asked before a unit is fed and
    returns False to skip it (a cache hit); ``on_unit(state, table)`` receives each finished unit."""

    # long: a plain record of the run's settings
    def __init__(self, teacher, student, *, config, device: torch.device, precision: str,
                 on_unit: Callable, gpu_decode: bool):
        self.teacher, self.student, self.config, self.device = teacher, student, config, device
        self.precision, self.on_unit = precision, on_unit
        self.keys = list(dict.fromkeys([teacher.preprocess_key, student.preprocess_key]))
        self.gpu = device.type == "cuda"
        # JPEGs decoded in batches here, on ``device`` (nvJPEG on CUDA; on a CPU only for tests)
        self.gpu_jpeg = bool(gpu_decode and gpu_decodable(self.keys))
        self.gray = all(k[0][0] == 1 for k in self.keys)
        self.lookup = {name: i for i, name in enumerate(teacher.class_names)}
        self.keep_logits = keeps_logits(config.keep_logits, teacher.num_classes)
        self.info = {"gpu_jpegs": 0, "gpu_jpeg_fallbacks": 0, "batches": 0, "head_batches": 0}
        self.info_lock = threading.Lock()
        self.first_batch_at: float | None = None  # perf_counter() when the first batch reached the models
        self.clock = active_clock()  # per-stage timing, only inside ``stage_clock()`` (kdata.scoring.stage_clock)
        self.writer = UnitWriter(self.write_unit, behind=False)  # a run's own, made by ``consume``

    # -------------------------------------------------------------------------------------------
    # feeding

    def tasks(self, states: list[UnitState], plans: Callable, claim: Callable) -> Iterator[BatchTask]:
        """Batch tasks, unit after unit, drawn lazily by the DataLoader (in this process)."""
        bs = self.config.batch_size
        for st in states:
            if not claim(st):
                continue
            try:
                plan = plans(st.index)
            except KdataError as exc:  # raised when the loop reaches this unit, after the ones before it
                plan = FailedRows(str(exc))
            st.n_in = n = plan.num_rows
            starts = list(range(0, n, bs)) or [0]
            for s in starts:
                stop = min(s + bs, n)
                yield BatchTask(st.index, s, stop, plan.part(s, stop), s == starts[-1])

    # long: the in-process, warm and cold paths, each with its clean-up
    def run(self, states: list[UnitState], tasks: Iterator[BatchTask], *, num_workers: int) -> None:
        """Decode and score every task; each unit goes to ``on_unit`` as soon as its last batch is back.

        Workers belong to this process's ``DecodeService`` (started by the first run that needs them,
        resumed by every later one: a flow's per-unit tasks share them). While they start, this
        process decodes batches itself (at most ``HEAD_BATCHES``), so the forward pass starts at once."""
        if not num_workers:
            self.consume(states, (decode_task(t, self.keys, max_pixels=self.config.max_pixels,
                                              gpu_jpeg=self.gpu_jpeg, normalised=not self.gpu) for t in tasks),
                         worker=False)
            return
        service = decode_service(self.keys, num_workers=num_workers, pin=self.gpu, max_pixels=self.config.max_pixels,
                                 gpu_jpeg=self.gpu_jpeg, normalised=not self.gpu, cpu_share=CPU_JPEG_SHARE)
        with service.lock:
            starting = None
            try:
                if service.started:  # warm: the workers resume at once
                    self.consume(states, service.iterate(tasks), worker=True)
                    return
                # cold: the workers start on a thread (a fork server's start takes seconds) while
                # this process decodes the first batches itself, until the workers draw their first task
                feed = HeadFirst(tasks)
                pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kdata-start-workers")
                starting = pool.submit(service.iterate, feed)
                pool.shutdown(wait=False)  # its one thread ends once the workers are up
                head = (decode_task(t, self.keys, max_pixels=self.config.max_pixels, gpu_jpeg=self.gpu_jpeg,
                                    normalised=not self.gpu, cpu_share=CPU_JPEG_SHARE)
                        for t in feed.head(ready=starting.done, limit=HEAD_BATCHES))
                self.consume(states, itertools.chain(head, started(starting)), worker=True)
            except BaseException:
                discard_service(service)
                if starting is not None:  # workers still starting are stopped once they are up, not waited for
                    starting.add_done_callback(lambda _: service.close())
                raise

    def consume(self, states: list[UnitState], batches: Iterator[dict], *, worker: bool) -> None:
        by_index = {st.index: st for st in states}
        in_flight = 1 if self.gpu else 0
        pending: deque[Pending] = deque()
        # inputs made ahead where this process decodes (nvJPEG; the batched decode on a CPU is for tests)
        ahead = PREPARE_AHEAD if worker and (self.gpu or self.gpu_jpeg) else 0
        prepared = self.prepare_ahead(batches, depth=ahead, threads=PREPARE_THREADS) if ahead else \
            ((out, None) for out in batches)
        self.writer = UnitWriter(self.write_unit, behind=WRITE_BEHIND)
        try:
            try:
                for out, ready in timed_iter(self.clock, "wait_for_batch", prepared):
                    if "fatal" in out:  # the batches in flight finish first: their units are written
                        while pending:
                            self.collect(pending.popleft())
                        raise KdataError(out["fatal"])
                    pending.append(self.step(by_index[out["unit"]], out, worker=worker, ready=ready))
                    while len(pending) > in_flight:
                        self.collect(pending.popleft())
            finally:
                prepared.close()  # stops and joins the preparing threads, whatever ended the loop
            while pending:
                self.collect(pending.popleft())
        except BaseException as exc:
            ends = self.writer.close_after(exc)  # the units scored in full are still written
            if ends is not exc:
                raise ends from exc
            raise
        self.writer.close()

    def prepare_ahead(self, batches: Iterator[dict], *, depth: int,
                      threads: int = 1) -> Iterator[tuple[dict, Ready | None]]:
        """``(batch, Ready)`` pairs, in order, whose inputs ``threads`` threads of their own make, each on
        a CUDA stream of its own, at most ``depth`` batches ahead of the forward pass (bounded GPU
        memory). Batches are drawn from the decode workers here; a thread's error is raised here, in
        order; the threads are gone when this generator is closed."""
        local = threading.local()

        def make(out: dict) -> tuple[dict, Ready | None]:
            if "fatal" in out:
                return out, None
            if self.gpu and getattr(local, "stream", None) is None:
                local.stream = torch.cuda.Stream(device=self.device)
            stream = getattr(local, "stream", None)
            with torch.inference_mode(), (torch.cuda.stream(stream) if stream else contextlib.nullcontext()), \
                    torch.autocast(self.device.type, enabled=False), timed(self.clock, "inputs", self.device):
                x, rows, bad = self.inputs(out)
                event = torch.cuda.Event() if stream else None
                if event is not None:
                    event.record(stream)
            return out, Ready(x, rows, bad, event)

        pool = ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="kdata-prepare-inputs")
        futures: deque = deque()
        batches = iter(batches)
        try:
            while True:
                try:
                    out = next(batches, None)
                except Exception:  # a batch that cannot be drawn: the ones already made are handed on first
                    while futures:
                        yield futures.popleft().result()
                    raise
                if out is None:
                    break
                futures.append(pool.submit(make, out))
                if "fatal" in out:
                    break
                while len(futures) > depth:
                    yield futures.popleft().result()
            while futures:
                yield futures.popleft().result()
        finally:
            for f in futures:
                f.cancel()
            pool.shutdown(wait=True)

    # -------------------------------------------------------------------------------------------
    # one batch

    def step(self, st: UnitState, out: dict, *, worker: bool = False, ready: Ready | None = None) -> Pending:
        """Account one decoded batch, put its images on the device (or take the inputs ``ready`` made
        ahead: the compute stream waits for their event) and launch the forward pass.

        ``st.pids`` records the worker processes that decoded the unit (with ``worker``; the batch
        this process decodes while they start is not theirs), else this process."""
        if not worker or out["pid"] != os.getpid():
            st.pids.add(out["pid"])
        else:
            self.info["head_batches"] += 1
        st.empty += out["empty"]
        ids = out["ids"]
        st.ids += ids
        labels = [self.lookup.get(v, -1) if v is not None else -1 for v in out["labels"]]
        st.label_idx += labels
        if ready is None:
            with torch.autocast(self.device.type, enabled=False), timed(self.clock, "inputs", self.device):
                x, rows, bad = self.inputs(out)  # pixels in fp32, whatever the precision
        else:
            x, rows, bad = ready.x, ready.rows, ready.bad
            if ready.event is not None:
                compute = torch.cuda.current_stream(self.device)
                compute.wait_event(ready.event)
                for v in x.values():
                    v.record_stream(compute)  # made on the preparing stream: not reused before the forward ends
        st.quarantined += [(ids[j], err, out["labels"][j]) for j, err in bad]  # the web label stays on record
        rows = np.asarray(rows, dtype=np.int64) + out["start"]
        self.info["batches"] += 1
        if not len(rows):
            return Pending(st, rows, {}, None, out["last"])
        labels = np.asarray(labels, dtype=np.int32)[rows - out["start"]]  # this batch's rows (not the unit's so far)
        if self.first_batch_at is None:
            self.first_batch_at = time.perf_counter()
        with timed(self.clock, "forward", self.device):
            results = self.forward(x, labels)
        event = None
        if self.gpu:
            with timed(self.clock, "to_host", self.device):
                results = {k: v.to("cpu", non_blocking=True) for k, v in results.items()}  # into pinned memory
            event = torch.cuda.Event()
            event.record(torch.cuda.current_stream(self.device))  # the scoring device's stream (cuda:N too)
        return Pending(st, rows, results, event, out["last"])

    def inputs(self, out: dict) -> tuple[dict, list[int], list[tuple[int, str]]]:
        """The batch's model inputs on the device, in row order: CPU-decoded rows plus, on CUDA, the
        JPEGs decoded here by nvJPEG (a JPEG nvJPEG refuses is decoded on the CPU, else quarantined)."""
        rows, bad = out["rows"].tolist(), list(out["bad"])
        parts = []  # (rows, {key: normalised batch on the device}), each part in ascending row order
        if rows:  # normalised by the worker on a CPU run; uint8, normalised here, for a GPU
            px = {k: out["pixels"][k].to(self.device, non_blocking=self.gpu) for k in self.keys}
            parts.append((rows, {k: v if v.is_floating_point() else normalise(v, k[1], k[2]) for k, v in px.items()}))
        if self.gpu_jpeg and out["jpeg_pixels"]:
            parts += self.gpu_part(out, bad)
        if len(parts) <= 1:
            return (parts[0][1] if parts else {}), (parts[0][0] if parts else []), sorted(bad)
        rows = [r for part_rows, _ in parts for r in part_rows]
        order = to_device(torch.from_numpy(np.argsort(np.asarray(rows), kind="stable")), self.device)
        x = {k: torch.cat([part[k] for _, part in parts])[order] for k in self.keys}
        return x, sorted(rows), sorted(bad)

    def gpu_part(self, out: dict, bad: list) -> list[tuple[list[int], dict]]:
        """nvJPEG-decode the batch's JPEGs, in chunks of at most ``GPU_DECODE_PIXELS`` decoded pixels
        (a batch of huge images cannot exhaust GPU memory); each JPEG nvJPEG refuses goes to the CPU
        decoder, then, failing there too, to ``bad``."""
        jrows, parts, fallback_rows, fallback = out["jpeg_rows"].tolist(), [], [], []
        offsets = out["jpeg_offsets"]
        jpegs = [out["jpegs"][offsets[i]:offsets[i + 1]] for i in range(len(jrows))]  # views of the one buffer
        for chunk in pixel_chunks(out["jpeg_pixels"], GPU_DECODE_PIXELS):
            with timed(self.clock, "inputs/nvjpeg", self.device):
                images = decode_jpegs([jpegs[i] for i in chunk], device=self.device, gray=self.gray)
            ok = [i for i, im in zip(chunk, images) if im is not None]
            for i in (i for i, im in zip(chunk, images) if im is None):
                try:
                    fallback.append(decode_multi_u8(jpegs[i].numpy().tobytes(), self.keys,
                                                    max_pixels=self.config.max_pixels))
                    fallback_rows.append(jrows[i])
                except Exception as exc:  # noqa: BLE001  (fails on both decoders: quarantined)
                    bad.append((jrows[i], decode_error(exc)))
            with self.info_lock:  # the inputs may be made by several threads
                self.info["gpu_jpegs"] += len(ok)
                self.info["gpu_jpeg_fallbacks"] += len(chunk) - len(ok)
            if ok:
                with timed(self.clock, "inputs/preprocess", self.device):
                    x = preprocess([im for im in images if im is not None], self.keys, precision=self.precision)
                parts.append(([jrows[i] for i in ok], x))
        if fallback:
            parts.append((fallback_rows, {k: normalise(to_device(torch.stack([d[k] for d in fallback]), self.device),
                                                       k[1], k[2]) for k in self.keys}))
        return parts

    def forward(self, x: dict, labels: np.ndarray) -> dict[str, torch.Tensor]:
        """Teacher and student forward, then the disagreement statistics, all on the scoring device."""
        xt, xs = x[self.teacher.preprocess_key], x[self.student.preprocess_key]
        if self.gpu:
            xt, xs = xt.contiguous(memory_format=torch.channels_last), xs.contiguous(memory_format=torch.channels_last)
        t_logits, t_feat = self.teacher.forward(xt)
        s_logits, _ = self.student.forward(xs)
        li = to_device(torch.from_numpy(labels), self.device)
        st = disagreement(t_logits.float(), s_logits.float(), temperature=self.config.temperature,
                          topk=self.config.topk, label_idx=li)
        if self.keep_logits:
            st["teacher_logits"] = t_logits.float()
            st["student_logits"] = s_logits.float()
        else:  # the methods' exact probabilities, while the logits are here
            st.update(exact_columns(t_logits, s_logits, temperature=self.config.temperature, label_idx=li))
        if self.config.embeddings and t_feat is not None:
            st["embedding"] = t_feat.float().half()
        return st

    def collect(self, p: Pending) -> None:
        """Take a batch's results off the device; hand its unit on when it was the last batch."""
        if p.event is not None:
            with timed(self.clock, "wait_for_device"):
                p.event.synchronize()
        # copied into the unit's arrays: the batch's own are freed with it (kdata.scoring.unit_state)
        p.state.add_results({k: v.numpy() for k, v in p.results.items()})
        if len(p.rows):
            p.state.rows.append(p.rows)
        if p.last:
            self.writer.submit(p.state)  # behind: the next batches are scored meanwhile

    def write_unit(self, state: UnitState) -> None:
        """Hand a finished unit to ``on_unit``, then drop its per-row results (what it wrote) and
        return the heap's free pages (``trim_heap``)."""
        try:
            with timed(self.clock, "write_unit"):
                self.on_unit(state)
        finally:
            state.drop_rows()
            trim_heap()
