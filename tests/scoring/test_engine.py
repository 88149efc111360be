"""One decode pipeline per scoring run: workers start once and serve every unit, cached units start
none, a unit that cannot be read stops the run only after the units before it are written, the
precision and device type are part of the score cache key, and ``--workers auto`` resolves sensibly."""

from __future__ import annotations

import os
import pickle
import threading
import time

import numpy as np
import pyarrow as pa
import pytest
import torch

from kdata.core.errors import KdataError
from kdata.models.decode_pool import (
    AUTO_MAX_CPU,
    AUTO_MAX_CUDA,
    available_cores,
    check_workers,
    resolve_workers,
)
from kdata.models.spec import load_model
from kdata.pools.readers import open_image_folder
from kdata.pools.spec import open_pool
from kdata.scoring.score import (
    ScoreConfig,
    precision_mode,
    resolve_precision,
    score_pool,
    score_table,
    score_units,
    unit_cache_key,
)
from tests.helpers.real_inputs import (
    digits,
    exported_models,
    make_image_folder,
    make_parquet_units,
    png_bytes,
)


def test_decode_workers_start_once_per_run_and_serve_every_unit(tmp_path, cache, models):
    teacher, student = models
    root = make_image_folder(tmp_path / "pool", n=30, corrupt=True)  # 33 files: 3 units of 11, 3 batches each
    pool = open_image_folder(str(root), unit_files=11)
    assert len(pool.units) == 3
    scores, quarantined, info = score_pool(pool, teacher, student, cache=False,
                                           config=ScoreConfig(batch_size=4, num_workers=2))
    assert info["workers"] == 2 and info["cache_hits"] == 0
    pids = info["decode_pids"]  # the worker processes that decoded each unit's batches
    assert list(pids) == [u.name for u in pool.units]
    assert pids[pool.units[0].name] == pids[pool.units[1].name] == pids[pool.units[2].name]
    assert len(pids[pool.units[0].name]) == 2 and os.getpid() not in pids[pool.units[0].name]
    # …and gave the same scores, bit for bit, as decoding in this process
    again, q0, info0 = score_pool(pool, teacher, student, cache=False, config=ScoreConfig(batch_size=4))
    assert info0["workers"] == 0 and info0["decode_pids"][pool.units[0].name] == [os.getpid()]
    assert scores.equals(again) and quarantined == q0 and len(quarantined) == 3 and scores.num_rows == 30


def test_cached_units_start_no_worker(tmp_path, cache, models):
    teacher, student = models
    root = make_image_folder(tmp_path / "pool", n=24)
    pool = open_image_folder(str(root), unit_files=8)
    cfg = ScoreConfig(batch_size=4, num_workers=2)
    first, _, info = score_pool(pool, teacher, student, config=cfg)
    assert info["cache_hits"] == 0 and info["workers"] == 2
    again, _, info = score_pool(pool, teacher, student, config=cfg)
    assert info["cache_hits"] == 3 and info["workers"] == 0 and info["decode_pids"] == {}
    assert again.equals(first)
    # one unit's entry gone: only that unit is decoded
    key = unit_cache_key(pool.units[1], teacher, student, cfg)
    (cache / "scores" / f"{key}.quarantine.json").unlink()
    third, _, info = score_pool(pool, teacher, student, config=cfg)
    assert info["cache_hits"] == 2 and list(info["decode_pids"]) == [pool.units[1].name]
    assert third.equals(first)


def test_a_unit_given_twice_is_scored_once(tmp_path, cache, models):
    """The second copy of a unit in one run reuses the first one's entry (a cache hit), also while
    that entry is still being written behind the scoring loop."""
    teacher, student = models
    pool = open_image_folder(str(make_image_folder(tmp_path / "pool", n=16)), unit_files=8)
    a, b = pool.units
    results, info = score_units([a, b, a], teacher, student, config=ScoreConfig(batch_size=4, num_workers=2))
    assert [r[3] for r in results] == [False, False, True] and results[2][:3] == results[0][:3]
    assert info["n_in"] == 24 and list(info["decode_pids"]) == [a.name, b.name]


def test_a_broken_unit_stops_the_run_after_the_units_before_it_are_written(tmp_path, cache, models):
    teacher, student = models
    root = make_parquet_units(tmp_path / "pq", units=3, rows=8)
    good = (root / "part-1.parquet").read_bytes()
    (root / "part-1.parquet").write_bytes(b"not parquet at all")
    cfg = ScoreConfig(batch_size=4, num_workers=2)
    with pytest.raises(KdataError, match=r"part-1.parquet: cannot read Parquet"):
        score_pool(open_pool(str(root)), teacher, student, config=cfg)
    (root / "part-1.parquet").write_bytes(good)
    scores, _, info = score_pool(open_pool(str(root)), teacher, student, config=cfg)
    assert info["cache_hits"] == 1 and list(info["decode_pids"]) == ["part-1.parquet", "part-2.parquet"]
    assert scores.num_rows == 24


def test_cache_key_changes_with_precision_and_device_type(tmp_path, models):
    teacher, student = models
    unit = open_image_folder(str(make_image_folder(tmp_path / "pool", n=4))).units[0]

    def key(precision, device):
        return unit_cache_key(unit, teacher, student, ScoreConfig(precision=precision), device=device)

    keys = {(p, d): key(p, d) for p in ("fp32", "bf16") for d in ("cpu", "cuda")}
    assert len(set(keys.values())) == 4  # every (precision, device type) its own entry
    assert key("auto", "cpu") == keys["fp32", "cpu"] and key("auto", "cuda") == keys["bf16", "cuda"]
    assert key("fp32", "cuda:1") == keys["fp32", "cuda"]  # the device type, not the card
    # batch size and worker count do not change what is computed
    assert unit_cache_key(unit, teacher, student, ScoreConfig(batch_size=7, num_workers=3)) == keys["fp32", "cpu"]
    assert resolve_precision("auto", "cuda") == "bf16" and resolve_precision("auto", "cpu") == "fp32"
    with pytest.raises(KdataError, match="--precision 'fp16'"):
        ScoreConfig(precision="fp16")


def test_precision_is_applied_and_fp32_turns_tf32_off(tmp_path, models):
    teacher, student = models
    table = open_pool(str(make_image_folder(tmp_path / "pool", n=16))).read_all()
    fp32, _ = score_table(table, teacher, student, config=ScoreConfig(precision="fp32"))
    bf16, _ = score_table(table, teacher, student, config=ScoreConfig(precision="bf16"))
    a, b = (np.asarray(t.column("kl_ts").to_pylist()) for t in (fp32, bf16))
    assert not np.array_equal(a, b) and np.abs(a - b).max() < 0.5  # bf16 autocast ran, and stayed close
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        with precision_mode("fp32", torch.device("cuda")):
            assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_workers_auto_resolves_from_rows_cores_and_device():
    cores = available_cores()
    assert resolve_workers("auto", rows=500) == 0  # a tiny pool decodes in-process: no start-up to pay
    assert resolve_workers("auto", rows=50_000) == max(0, min(cores - 1, AUTO_MAX_CPU))
    assert resolve_workers("auto", rows=50_000, device="cuda") == max(0, min(cores - 1, AUTO_MAX_CUDA))
    assert resolve_workers(3, rows=10) == 3 and resolve_workers("2", rows=10) == 2
    assert check_workers(" AUTO ") == "auto" and check_workers(0) == 0
    for bad in (-1, "-1", "many", True, 1.5):
        with pytest.raises(KdataError, match="--workers"):
            check_workers(bad)


def test_workers_option_on_the_command_line():
    from kdata.cli import build_parser
    from kdata.pipeline.arguments import run_options_from_args

    parser = build_parser()
    for given, want in (([], "auto"), (["--workers", "auto"], "auto"), (["--workers", "2"], 2)):
        args = parser.parse_args(["select", "--out", "x", *given])
        assert run_options_from_args(args).num_workers == want


def test_tasks_carry_no_image_bytes(tmp_path):
    """What a worker receives per batch: where to read, not what was read."""
    root = make_image_folder(tmp_path / "pool", n=12)
    unit = open_image_folder(str(root)).units[0]
    plan = unit.plan()
    images = unit.read().column("image").to_pylist()
    shipped = pickle.dumps(plan.part(0, plan.num_rows))
    assert not any(img in shipped for img in images) and len(shipped) < sum(map(len, images)) / 4


def _photo_jpegs(n: int, seed: int = 0) -> list[bytes]:
    """Crops (40–300 px) of scikit-learn's sample photos as JPEGs, one in five greyscale."""
    import io

    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos, rng, out = load_sample_images().images, np.random.default_rng(seed), []
    for i in range(n):
        p, s = photos[i % 2], int(rng.integers(40, 301))
        y, x = int(rng.integers(0, p.shape[0] - s)), int(rng.integers(0, p.shape[1] - s))
        im = Image.fromarray(np.ascontiguousarray(p[y:y + s, x:x + s]))
        buf = io.BytesIO()
        (im.convert("L") if i % 5 == 0 else im).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


# The device-decode tests run on the CPU everywhere (torchvision decodes with libjpeg there) and
# also on CUDA (nvJPEG) where a GPU is present: `pytest tests/scoring/test_engine.py -k device`.
DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]


def _run_device_decode(table, teacher, student, *, on_device: bool, device: str = "cpu"):
    from kdata.pools.base import TableRows
    from kdata.scoring.engine import ScoringRun, UnitState
    from kdata.scoring.score import unit_table

    st, out, plan = UnitState(0, "t"), {}, TableRows(table)
    run = ScoringRun(teacher, student, config=ScoreConfig(batch_size=8), device=torch.device(device),
                     precision="fp32", on_unit=lambda s: out.update(table=unit_table(s)), gpu_decode=on_device)
    with torch.inference_mode():
        run.run([st], run.tasks([st], lambda i: plan, lambda s: True), num_workers=0)
    return out["table"], st.quarantined, run.info


@pytest.mark.parametrize("device", DEVICES)
def test_batched_jpeg_decode_on_the_scoring_device_matches_the_worker_path(tmp_path, device):
    """The CUDA path's assembly (on the CPU device too, where torchvision decodes with libjpeg):
    JPEGs decoded in one batched call and preprocessed with torch ops, PNGs from the workers, a
    truncated JPEG and one with a frame marker inside its scan (both decoded by nvJPEG without an
    error) sent to the CPU decoder up front, a JPEG with a bogus Huffman table that the batched
    decoder refuses retried on the CPU decoder — all three quarantined with the CPU decoder's
    errors, exactly as without batched decoding."""
    from kdata.models.builtin import DigitsNet
    from kdata.models.files import export_model

    teacher = load_model(exported_models()["teacher_pt2"], device=device)  # 1×32×32 bilinear
    torch.manual_seed(0)
    student = load_model(str(export_model(DigitsNet((4, 8, 8), num_classes=10, in_ch=3).eval(), tmp_path / "s.pt2",
                                          input_size=(3, 48, 48), mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3),
                                          class_names=teacher.class_names)), device=device)
    student.interpolation = "bicubic"
    jpegs = _photo_jpegs(20)
    truncated = jpegs[3][: len(jpegs[3]) // 2]
    sos = jpegs[4].index(b"\xff\xda")  # a frame marker inside the scan: header and end marker intact
    broken = jpegs[4][:sos + 20] + b"\xff\xc0\x00\x02" + jpegs[4][sos + 24:]
    dht = jpegs[5].index(b"\xff\xc4")  # a Huffman table whose 16 code counts sum far above 256
    bogus = jpegs[5][:dht + 5] + b"\xff" * 16 + jpegs[5][dht + 21:]
    images = jpegs + [png_bytes(a) for a in digits(6)[0]] + [truncated, broken, bogus, b"\xff\xd8\xff\xe0 not a jpeg",
                                                             None]
    order = np.random.default_rng(1).permutation(len(images))
    n = len(images)
    table = pa.table({"sample_id": [f"s{i}" for i in range(n)], "image": [images[i] for i in order],
                      "label": [str(i % 10) for i in range(n)]})
    plain, q_plain, _ = _run_device_decode(table, teacher, student, on_device=False, device=device)
    batched, q_device, info = _run_device_decode(table, teacher, student, on_device=True, device=device)
    assert info["gpu_jpegs"] == 20 and info["gpu_jpeg_fallbacks"] == 1  # the bogus one: refused, then CPU
    assert batched.column("sample_id").to_pylist() == plain.column("sample_id").to_pylist() and plain.num_rows == 26
    assert q_device == q_plain and len(q_plain) == 5  # truncated, broken, bogus, garbage, empty: same rows and errors
    for col in ("teacher_conf", "student_conf", "kl_ts"):
        a, b = (np.asarray(t.column(col).to_pylist()) for t in (plain, batched))
        assert np.abs(a - b).max() < 0.05, col
    # GPU memory is bounded by decoding in chunks of at most GPU_DECODE_PIXELS: many chunks, same scores
    from kdata.scoring import engine

    saved, engine.GPU_DECODE_PIXELS = engine.GPU_DECODE_PIXELS, 60_000
    try:
        chunked, q_chunked, _ = _run_device_decode(table, teacher, student, on_device=True, device=device)
    finally:
        engine.GPU_DECODE_PIXELS = saved
    # same rows and quarantine; the scores agree to float rounding (the padded batches differ, so
    # may a pixel's rounding at an exact half level)
    assert chunked.column("sample_id").equals(batched.column("sample_id")) and q_chunked == q_device
    for col in ("teacher_conf", "student_conf", "kl_ts"):
        a, b = (np.asarray(t.column(col).to_pylist()) for t in (chunked, batched))
        assert np.abs(a - b).max() < 1e-3, col


def test_pixel_chunks_bound_each_decode_call():
    from kdata.scoring.engine import pixel_chunks

    assert pixel_chunks([5, 5, 5, 20, 1, 1], 10) == [[0, 1], [2], [3], [4, 5]]
    assert pixel_chunks([], 10) == []


@pytest.mark.parametrize("device", DEVICES)
def test_device_preprocessing_follows_the_cpu_path_pixel_for_pixel_closely(device):
    """Resize (bilinear, bicubic), the reduced-scale JPEG decode, grey ↔ RGB: mean |Δ| under one grey level."""
    from kdata.models.gpu_decode import decode_jpegs, preprocess
    from kdata.models.images import decode_multi

    datas = _photo_jpegs(24, seed=3)
    for keys in ([((3, 96, 96), (0.48, 0.46, 0.41), (0.27, 0.26, 0.28), "bicubic"),
                  ((3, 64, 64), (0.5,) * 3, (0.25,) * 3, "bilinear")],
                 [((1, 32, 32), (0.5,), (0.5,), "bilinear"), ((3, 224, 224), (0.5,) * 3, (0.5,) * 3, "bicubic")],
                 [((1, 24, 24), (0.5,), (0.5,), "bilinear")]):
        gray = all(k[0][0] == 1 for k in keys)
        images = decode_jpegs([torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas],
                              device=torch.device(device), gray=gray)
        got = {k: v.cpu() for k, v in preprocess(images, keys).items()}
        for k in keys:
            want = torch.stack([decode_multi(d, keys)[k] for d in datas])
            levels = ((got[k] - want) * torch.tensor(k[2]).reshape(1, -1, 1, 1) * 255).abs()
            assert levels.mean() < 1.0, (k, levels.mean())


def test_successive_scoring_calls_reuse_the_decode_workers(tmp_path, cache, models):
    """A flow scores one unit per task: the process's decode workers serve every call, none restarts."""
    from kdata.scoring.score import score_units

    teacher, student = models
    root = make_image_folder(tmp_path / "pool", n=24)
    pool = open_image_folder(str(root), unit_files=8)
    cfg = ScoreConfig(batch_size=4, num_workers=2)
    seen = []
    for u in pool.units:
        _, info = score_units([u], teacher, student, config=cfg, cache=False)
        seen.append(set(info["decode_pids"][u.name]))
    workers = set().union(*seen)
    assert len(workers) == 2 and os.getpid() not in workers and all(seen)


def _score_batched(tables, teacher, student, *, workers: int, on_unit=None, device: str = "cpu"):
    """Units (tables; None: a unit that cannot be read) through the batched-decode path with workers."""
    import threading

    from kdata.pools.base import TableRows
    from kdata.scoring.engine import ScoringRun, UnitState
    from kdata.scoring.score import unit_table

    states, out = [UnitState(i, f"u{i}") for i in range(len(tables))], {}

    def plans(i):
        if tables[i] is None:
            raise KdataError(f"u{i}: cannot read")
        return TableRows(tables[i])

    def finish(st):
        out[st.index] = (unit_table(st), st.quarantined, {t.name for t in threading.enumerate()})
        if on_unit:
            on_unit(st)

    run = ScoringRun(teacher, student, config=ScoreConfig(batch_size=6), device=torch.device(device),
                     precision="fp32", on_unit=finish, gpu_decode=True)
    with torch.inference_mode():
        run.run(states, run.tasks(states, plans, lambda s: True), num_workers=workers)
    return out


def _jpeg_units(n_units: int, per_unit: int = 14):
    jpegs = _photo_jpegs(n_units * per_unit, seed=5)
    jpegs[3] = jpegs[3][: len(jpegs[3]) // 2]  # truncated: quarantined by the CPU decoder
    return [pa.table({"sample_id": [f"s{u}-{i}" for i in range(per_unit)],
                      "image": jpegs[u * per_unit:(u + 1) * per_unit],
                      "label": [str(i % 10) for i in range(per_unit)]}) for u in range(n_units)]


def _preparing(names) -> bool:
    return any(n.startswith("kdata-prepare-inputs") for n in names)


@pytest.mark.parametrize("device", DEVICES)
def test_inputs_made_ahead_on_their_own_thread_give_the_same_scores(device, monkeypatch):
    """With ``PREPARE_AHEAD`` > 0 and decode workers, the batched-decode path makes each batch's inputs
    on threads (and, on CUDA, streams) of their own, ahead of the forward pass: same rows, quarantine
    and scores as making them in turn, with one preparing thread or two, and the threads are gone
    once the run returns."""
    import threading

    from kdata.scoring import engine

    teacher = load_model(exported_models()["teacher_pt2"], device=device)
    student = load_model(exported_models()["student_pt"], device=device)
    tables = _jpeg_units(3)
    monkeypatch.setattr(engine, "PREPARE_AHEAD", 0)
    in_turn = _score_batched(tables, teacher, student, workers=2, device=device)
    assert not any(_preparing(names) for _, _, names in in_turn.values())
    monkeypatch.setattr(engine, "PREPARE_AHEAD", 2)
    for threads in (1, 2):
        monkeypatch.setattr(engine, "PREPARE_THREADS", threads)
        ahead = _score_batched(tables, teacher, student, workers=2, device=device)
        assert _preparing(ahead[0][2])  # alive while the first unit was handed on
        for u in range(3):
            assert ahead[u][0].equals(in_turn[u][0]) and ahead[u][1] == in_turn[u][1]
        assert len(ahead[0][1]) == 1 and sum(ahead[u][0].num_rows for u in range(3)) == 41
        assert not _preparing(t.name for t in threading.enumerate())


def test_finished_units_are_written_on_a_thread_of_their_own_and_all_before_the_run_returns(monkeypatch):
    """``WRITE_BEHIND``: each finished unit goes to ``on_unit`` on the writing thread while later
    batches are scored; the tables equal those written in turn, and every unit is written (the thread
    gone) when the run returns — also when the run fails after some units are finished."""
    import threading

    from kdata.scoring import engine

    m = exported_models()
    teacher, student = load_model(m["teacher_pt2"]), load_model(m["student_pt"])
    tables = _jpeg_units(3)
    where: dict[int, str] = {}

    def note(st):
        where[st.index] = threading.current_thread().name

    behind = _score_batched(tables, teacher, student, workers=2, on_unit=note)
    assert set(where) == {0, 1, 2} and all(n.startswith("kdata-write-units") for n in where.values())
    assert not any(t.name.startswith("kdata-write-units") for t in threading.enumerate())
    monkeypatch.setattr(engine, "WRITE_BEHIND", False)
    where.clear()
    in_turn = _score_batched(tables, teacher, student, workers=2, on_unit=note)
    assert set(where.values()) == {threading.current_thread().name}
    for u in range(3):
        assert behind[u][0].equals(in_turn[u][0]) and behind[u][1] == in_turn[u][1]
    monkeypatch.setattr(engine, "WRITE_BEHIND", True)
    written = []
    with pytest.raises(KdataError, match="u2: cannot read"):
        _score_batched([tables[0], tables[1], None], teacher, student, workers=2,
                       on_unit=lambda st: (time.sleep(0.2), written.append(st.index)))
    assert written == [0, 1]  # both finished units written, though the run failed before their writes ended


def test_errors_on_either_side_of_the_preparing_thread_stop_the_run_cleanly(monkeypatch):
    """A unit that cannot be read (met by the preparing thread) stops the run after the units before
    it are handed on; an error in the scoring thread stops the preparing one. Neither leaves it running."""
    import threading

    from kdata.scoring import engine

    monkeypatch.setattr(engine, "PREPARE_AHEAD", 2)
    m = exported_models()
    teacher, student = load_model(m["teacher_pt2"]), load_model(m["student_pt"])
    tables = _jpeg_units(2)
    seen = []
    with pytest.raises(KdataError, match="u1: cannot read"):
        _score_batched([tables[0], None, tables[1]], teacher, student, workers=2, on_unit=lambda st: seen.append(st.index))
    assert seen == [0]

    def fail(st):
        raise RuntimeError(f"disk full writing unit {st.index}")

    with pytest.raises(RuntimeError, match="disk full writing unit 0"):
        _score_batched(tables + tables, teacher, student, workers=2, on_unit=fail)
    assert not _preparing(t.name for t in threading.enumerate())


def test_a_share_of_the_gpu_jpegs_is_decoded_by_the_workers_by_row_number(monkeypatch):
    """``cpu_share``: the workers decode about that share of the JPEGs nvJPEG would take, chosen by
    the row's number in the unit (the same rows whatever the batching); every row is still decoded
    once, and a run with a share scores the same rows, quarantine and (to the two paths' pixel
    rounding) scores as without."""
    from kdata.models.decode_pool import BatchTask, cpu_jpeg_rows, decode_task
    from kdata.pools.base import TableRows
    from kdata.scoring import engine

    tables = _jpeg_units(3)
    keys = [((3, 32, 32), (0.5,) * 3, (0.25,) * 3, "bilinear")]
    plan = TableRows(tables[0])
    on_cpu = cpu_jpeg_rows(0, 14, 0.4)
    assert 3 <= on_cpu.sum() <= 8 and not cpu_jpeg_rows(0, 14, 0.0).any() and cpu_jpeg_rows(0, 14, 1.0).all()
    for cuts in ([0, 14], [0, 5, 9, 14]):  # one batch, or three: the same rows go to the CPU
        seen_cpu, seen_gpu = [], []
        for a, b in zip(cuts, cuts[1:]):
            out = decode_task(BatchTask(0, a, b, plan.part(a, b), b == 14), keys, max_pixels=None, gpu_jpeg=True,
                              normalised=False, cpu_share=0.4)
            seen_cpu += [a + r for r in out["rows"].tolist()]
            seen_gpu += [a + r for r in out["jpeg_rows"].tolist()]
        assert sorted(seen_cpu) == [r for r in range(14) if on_cpu[r] and r != 3]  # row 3: truncated, quarantined
        assert sorted(seen_gpu) == [r for r in range(14) if not on_cpu[r] and r != 3]
    m = exported_models()
    teacher, student = load_model(m["teacher_pt2"]), load_model(m["student_pt"])
    plain = _score_batched(tables, teacher, student, workers=2)
    monkeypatch.setattr(engine, "CPU_JPEG_SHARE", 0.5)
    shared = _score_batched(tables, teacher, student, workers=2)
    for u in range(3):
        assert shared[u][0].column("sample_id").equals(plain[u][0].column("sample_id"))
        assert shared[u][1] == plain[u][1]
        for col in ("teacher_conf", "kl_ts"):
            a, b = (np.asarray(t.column(col).to_pylist()) for t in (plain[u][0], shared[u][0]))
            assert np.abs(a - b).max() < 0.05, col


def test_a_cold_run_decodes_in_this_process_until_its_workers_take_over(monkeypatch):
    """Starting the workers (a fork server's start: seconds) happens on a thread of its own while
    the scoring process decodes the first batches itself; the tasks it takes all precede the
    workers' (``HeadFirst``), so the units are the same, in order, as with warm workers, and every
    batch is decoded exactly once."""
    from kdata.models.decode_pool import HeadFirst, close_services
    from kdata.scoring import engine

    feed = HeadFirst(iter(range(10)))
    head = feed.head(ready=lambda: False, limit=100)
    assert [next(head), next(head)] == [0, 1]
    assert next(feed) == 2  # the workers drew a task: the head takes none after it
    assert list(head) == [] and list(feed) == list(range(3, 10))
    assert list(HeadFirst(iter(range(5))).head(ready=lambda: False, limit=3)) == [0, 1, 2]
    assert list(HeadFirst(iter(range(5))).head(ready=lambda: True, limit=3)) == []

    m = exported_models()
    teacher, student = load_model(m["teacher_pt2"]), load_model(m["student_pt"])
    tables = _jpeg_units(3)
    warm = _score_batched(tables, teacher, student, workers=2)  # the service is up from here on
    monkeypatch.setattr(engine, "HEAD_BATCHES", 256)
    close_services()  # cold again: this process decodes until the new workers draw their first task
    cold = _score_batched(tables, teacher, student, workers=2)
    for u in range(3):
        assert cold[u][0].equals(warm[u][0]) and cold[u][1] == warm[u][1]
    assert sum(cold[u][0].num_rows for u in range(3)) == 41
    close_services()

    def fail(st):
        raise RuntimeError(f"disk full writing unit {st.index}")

    with pytest.raises(RuntimeError, match="disk full writing unit 0"):  # an error while the workers start
        _score_batched(tables, teacher, student, workers=2, on_unit=fail)


class FailingRows:
    """A unit plan whose rows fail in the worker with an error that is not kdata's (a disk gone)."""

    num_rows = 6

    def part(self, start, stop):
        return self

    def read_rows(self, start, stop):
        raise OSError("disk went away")


def test_a_batch_that_cannot_be_drawn_leaves_the_units_before_it_written(monkeypatch):
    """With inputs made ahead, the batches already made are handed on before the error of the next
    one is raised, so a finished unit is written as it is in turn; an earlier unit's failed write
    stays the error of a run that a later unit then ends."""
    from kdata.pools.base import TableRows
    from kdata.scoring import engine
    from kdata.scoring.engine import ScoringRun, UnitState

    m = exported_models()
    teacher, student = load_model(m["teacher_pt2"]), load_model(m["student_pt"])
    plans = [TableRows(_jpeg_units(1, per_unit=6)[0]), FailingRows()]
    for ahead in (0, 3):
        monkeypatch.setattr(engine, "PREPARE_AHEAD", ahead)
        states, written = [UnitState(i, f"u{i}") for i in range(2)], []
        run = ScoringRun(teacher, student, config=ScoreConfig(batch_size=6), device=torch.device("cpu"),
                         precision="fp32", on_unit=lambda st: written.append(st.index), gpu_decode=True)
        with pytest.raises(OSError, match="disk went away"), torch.inference_mode():
            run.run(states, run.tasks(states, lambda i: plans[i], lambda s: True), num_workers=2)
        assert written == [0], ahead

    def fail(st):
        time.sleep(0.05)
        raise RuntimeError(f"disk full writing unit {st.index}")

    tables = _jpeg_units(1)
    with pytest.raises(RuntimeError, match="disk full writing unit 0"):
        _score_batched([tables[0], None], teacher, student, workers=2, on_unit=fail)


def test_progress_comes_one_report_at_a_time_and_never_goes_back(tmp_path, cache, models, monkeypatch):
    """Units are found cached on the thread that starts the workers and written on the writing
    thread, beside the scoring thread: the progress callback is never entered twice at once and
    its counts only grow."""
    import threading

    from kdata.models.decode_pool import close_services
    from kdata.scoring import engine

    teacher, student = models
    pool = open_image_folder(str(make_image_folder(tmp_path / "pool", n=40)), unit_files=5)
    cfg = ScoreConfig(batch_size=4, num_workers=2)
    score_units(pool.units[::2], teacher, student, config=cfg)  # every other unit cached
    calls, inside, lock = [], [0], threading.Lock()

    def progress(stage, done=None, total=None):
        with lock:
            inside[0] += 1
            assert inside[0] == 1, "entered twice at once"
        time.sleep(0.01)
        calls.append((done, threading.current_thread().name))
        with lock:
            inside[0] -= 1

    close_services()
    monkeypatch.setattr(engine, "HEAD_BATCHES", 256)
    results, info = score_units(pool.units, teacher, student, config=cfg, progress=progress)
    done = [d for d, _ in calls]
    assert done == sorted(done) and done[-1] == len(pool.units) == 8
    assert info["cache_hits"] == 4 and len({name for _, name in calls}) >= 2


def test_a_cold_run_that_fails_while_its_workers_start_does_not_wait_for_them_nor_leave_them(monkeypatch):
    """An error in the head (here: the first unit cannot be read) ends the run at once, without
    waiting for the workers' start; the workers are stopped as soon as they are up."""
    import multiprocessing

    from kdata.models import decode_pool
    from kdata.models.decode_pool import close_services
    from kdata.scoring import engine

    slow = decode_pool.DecodeService.iterate
    release, waited = threading.Event(), []

    def slow_start(self, tasks):  # the workers' results held back until the test has its error
        waited.append(release.wait(120))
        return slow(self, tasks)

    m = exported_models()
    teacher, student = load_model(m["teacher_pt2"]), load_model(m["student_pt"])
    close_services()
    monkeypatch.setattr(decode_pool.DecodeService, "iterate", slow_start)
    monkeypatch.setattr(engine, "HEAD_BATCHES", 256)
    tables = [None, *_jpeg_units(2)]
    with pytest.raises(KdataError, match="u0: cannot read"):
        _score_batched(tables, teacher, student, workers=2)
    release.set()
    assert False not in waited  # the error came before the workers were let go: it did not wait for them
    deadline = time.monotonic() + 30
    while multiprocessing.active_children() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not multiprocessing.active_children()  # stopped once they were up
