"""The stage clock: a scoring run inside ``stage_clock()`` reports where its time went, stage by
stage (host seconds; on CUDA device seconds too), and a run outside it records nothing."""

from __future__ import annotations

import time

import pyarrow as pa
import pytest

from kdata.models.spec import load_model
from kdata.pools.readers import open_image_folder
from kdata.scoring.score import ScoreConfig, score_pool
from kdata.scoring.stage_clock import StageClock, active_clock, stage_clock
from tests.helpers.real_inputs import exported_models, make_image_folder
from tests.scoring.test_engine import DEVICES, _photo_jpegs, _run_device_decode


def test_a_scoring_run_inside_the_clock_reports_its_stages(tmp_path, monkeypatch):
    monkeypatch.setenv("KDATA_CACHE", str(tmp_path / "cache"))
    m = exported_models()
    teacher, student = load_model(m["teacher_pt2"]), load_model(m["student_pt"])
    pool = open_image_folder(str(make_image_folder(tmp_path / "pool", n=24)), unit_files=8)
    cfg = ScoreConfig(batch_size=4, num_workers=2)
    assert active_clock() is None
    t0 = time.perf_counter()
    with stage_clock() as clock:
        assert active_clock() is clock
        scores, _, _ = score_pool(pool, teacher, student, config=cfg, cache=False)
    wall = time.perf_counter() - t0
    assert active_clock() is None and scores.num_rows == 24
    got = clock.summary()
    assert list(got) == ["wait_for_batch", "inputs", "forward", "write_unit"]  # in the order first seen
    assert got["forward"]["calls"] == got["inputs"]["calls"] == 6  # 3 units × 2 batches of 4
    assert got["write_unit"]["calls"] == 3
    assert got["wait_for_batch"]["calls"] == 7  # one per batch, then the end of the stream
    assert all(row["host_s"] > 0 and "device_s" not in row for row in got.values())  # a CPU run: host only
    # the scoring thread's stages fit in the run; units are written by a thread of their own, meanwhile
    assert sum(row["host_s"] for name, row in got.items() if name != "write_unit") <= wall
    assert got["write_unit"]["host_s"] <= wall
    # a run outside the block adds nothing to the clock
    score_pool(pool, teacher, student, config=cfg, cache=False)
    assert clock.summary() == got


@pytest.mark.parametrize("device", DEVICES)
def test_batched_jpeg_decode_is_timed_inside_the_inputs_stage(tmp_path, device):
    """The device-decode path splits ``inputs`` into the batched JPEG decode and the preprocessing;
    on CUDA every stage timed on the device also has its device seconds."""
    teacher = load_model(exported_models()["teacher_pt2"], device=device)
    student = load_model(exported_models()["student_pt"], device=device)
    n = 12
    table = pa.table({"sample_id": [f"j{i}" for i in range(n)], "image": _photo_jpegs(n),
                      "label": [None] * n})
    with stage_clock() as clock:
        out, quarantined, info = _run_device_decode(table, teacher, student, on_device=True, device=device)
    got = clock.summary()
    assert out.num_rows == n and not quarantined and info["gpu_jpegs"] == n
    assert {"inputs", "inputs/nvjpeg", "inputs/preprocess", "forward"} <= set(got)
    assert got["inputs/nvjpeg"]["calls"] == got["inputs/preprocess"]["calls"] == 2  # batches of 8: 8 + 4
    assert got["inputs/nvjpeg"]["host_s"] + got["inputs/preprocess"]["host_s"] <= got["inputs"]["host_s"]
    on_device = {k for k, row in got.items() if "device_s" in row}
    if device == "cuda":
        assert on_device == {"inputs", "inputs/nvjpeg", "inputs/preprocess", "forward", "to_host"}
        assert all(got[k]["device_s"] > 0 for k in on_device)
    else:
        assert not on_device


def test_the_clock_adds_up_stages_from_several_threads():
    import threading

    clock = StageClock()

    def work():
        for _ in range(50):
            with clock.stage("a"):
                pass

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert clock.summary()["a"]["calls"] == 200
    with pytest.raises(ValueError), clock.stage("b"):
        raise ValueError("a stage that fails is still counted")
    assert clock.summary()["b"]["calls"] == 1

