"""What a scoring run holds per unit: each batch's results freed once copied into its unit, each unit's
per-row state let go once written, and the C heap's free pages handed back after each write."""

from __future__ import annotations

import ctypes
import sys
import weakref

import pytest
import torch

from kdata.pools.readers import open_image_folder
from kdata.scoring import engine, unit_writer
from kdata.scoring.engine import ScoringRun, UnitState
from kdata.scoring.score import ScoreConfig, unit_table
from tests.helpers.real_inputs import make_image_folder


def _run(pool, teacher, student, *, on_unit, spy_forward=None) -> list[UnitState]:
    """Score every unit of ``pool`` in this process (batches of 2) through ``ScoringRun``; its states."""
    states = [UnitState(i, u.name) for i, u in enumerate(pool.units)]
    run = ScoringRun(teacher, student, config=ScoreConfig(batch_size=2), device=torch.device("cpu"),
                     precision="fp32", on_unit=on_unit, gpu_decode=False)
    if spy_forward:
        run.forward = spy_forward(run.forward)
    with torch.inference_mode():
        run.run(states, run.tasks(states, lambda i: pool.units[i].plan(), lambda s: True), num_workers=0)
    return states


def test_each_batchs_results_are_freed_once_copied_into_its_unit(tmp_path, models, monkeypatch):
    """Kept until its unit was written, every batch's small result arrays were cut out of the holes
    of the forward pass's buffers in the C heap, which then grew with every batch."""
    teacher, student = models
    pool = open_image_folder(str(make_image_folder(tmp_path / "pool", n=24)), unit_files=8)  # 4 batches a unit
    monkeypatch.setattr(engine, "WRITE_BEHIND", False)  # each unit written as its last batch is collected
    batches, alive, tables = [], [], {}

    def spy(forward):
        def wrapped(x, labels):  # the same results, in arrays whose lifetime a weak reference shows
            out = {k: v.numpy().copy() for k, v in forward(x, labels).items()}
            batches.append([weakref.ref(a) for a in out.values()])
            return {k: torch.from_numpy(a) for k, a in out.items()}
        return wrapped

    def write(st):
        alive.append(sum(any(r() is not None for r in refs) for refs in batches))
        tables[st.index] = unit_table(st)

    _run(pool, teacher, student, on_unit=write, spy_forward=spy)
    assert len(batches) == 12 and alive == [1, 1, 1]  # only the batch being collected
    for i, unit in enumerate(pool.units):  # rows in unit order, each row's results with its id and label
        t = tables[i]
        assert t.column("sample_id").to_pylist() == unit.read().column("sample_id").to_pylist()
        logits = torch.tensor(t.column("teacher_logits").to_pylist())
        label = torch.tensor(t.column("label_idx").to_pylist())
        assert (label >= 0).all()
        want = torch.softmax(logits, 1).gather(1, label[:, None])[:, 0]
        assert torch.allclose(torch.tensor(t.column("teacher_label_prob").to_pylist()), want, rtol=1e-5, atol=1e-7)


def test_a_written_units_rows_are_let_go_before_the_run_ends(tmp_path, models, monkeypatch):
    """A run keeps every unit's state to its end (lock, decoding processes, quarantine); the per-row
    results it wrote (about 0.6 KB a row: ids, labels, row numbers, scores) went with it."""
    teacher, student = models
    pool = open_image_folder(str(make_image_folder(tmp_path / "pool", n=24, corrupt=True)), unit_files=9)
    trims = []
    real = unit_writer.MALLOC_TRIM
    monkeypatch.setattr(unit_writer, "MALLOC_TRIM", lambda pad: (trims.append(pad), real and real(pad)))
    refs, written = [], []

    def write(st):
        written.append((st.index, unit_table(st).num_rows, len(st.quarantined)))
        refs.extend(weakref.ref(a) for v in st.chunks.values() for a in (v if isinstance(v, list) else [v]))

    states = _run(pool, teacher, student, on_unit=write)
    assert [w[0] for w in written] == [0, 1, 2] and sum(w[1] + w[2] for w in written) == 27
    assert refs and not any(r() is not None for r in refs)
    assert all(not st.chunks and not st.ids and not st.label_idx and not st.rows for st in states)
    assert sum(len(st.quarantined) for st in states) == 3 and all(st.pids for st in states)
    assert len(trims) == 3  # the heap's free pages handed back after each unit's write


@pytest.mark.skipif(unit_writer.MALLOC_TRIM is None or not sys.platform.startswith("linux"),
                    reason="glibc's malloc_trim and /proc")
def test_trim_heap_hands_freed_heap_pages_back_to_the_system():
    """Free heap pages between blocks still in use stay in the RSS until trimmed (glibc only trims
    the heap's top by itself): what the scoring process's heap held after each unit."""
    libc = ctypes.CDLL(None)
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]

    def rss_anon() -> int:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("RssAnon"))

    size = 64 << 10  # under any mmap threshold: from the heap
    blocks = [libc.malloc(size) for _ in range(3200)]
    for b in blocks:
        ctypes.memset(b, 1, size)
    for b in blocks[::2]:  # 100 MB freed, each block between two in use: never the heap's top
        libc.free(b)
    before = rss_anon()
    unit_writer.trim_heap()
    assert before - rss_anon() > 60 << 20
    for b in blocks[1::2]:
        libc.free(b)
