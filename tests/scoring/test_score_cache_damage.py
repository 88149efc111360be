"""A damaged score-cache entry is a miss, never a failure: real entries are damaged on disk (truncated,
garbage bytes, another valid Parquet file, bad JSON, a missing file), then a real run gives the same
scores as an undamaged one, says which file it dropped in one warning line and rewrites the entry."""

from __future__ import annotations

import json
import os
import threading
import time

import pytest

from kdata.cli import main
from kdata.core.lock import acquire
from kdata.pools.readers import open_image_folder
from kdata.scoring.cache_entries import read_unit_entry
from kdata.scoring.score import ScoreConfig, score_pool, unit_cache_key
from tests.helpers.damage import garbage_inside, rewrite_parquet
from tests.helpers.real_inputs import exported_models, make_image_folder, make_parquet_units

pytestmark = pytest.mark.usefixtures("warning_lines")  # kdata's warnings read from stderr, as the CLI prints them

CFG = ScoreConfig(batch_size=8)


DAMAGE = {
    "truncated": (lambda p, q: os.truncate(p, p.stat().st_size // 2), "parquet"),
    "garbage_inside": (lambda p, q: garbage_inside(p), "parquet"),
    "not_parquet": (lambda p, q: p.write_bytes(os.urandom(p.stat().st_size)), "parquet"),
    "fewer_rows": (lambda p, q: rewrite_parquet(p, lambda t: t.slice(0, 3)), "parquet"),
    "wrong_schema": (lambda p, q: rewrite_parquet(p, lambda t: t.drop_columns(["kl_ts", "teacher_pred"])), "parquet"),
    "parquet_missing": (lambda p, q: p.unlink(), "parquet"),
    "bad_json": (lambda p, q: q.write_text('{"n_in": 8, "quarantined": ['), "json"),
    "json_not_an_object": (lambda p, q: q.write_text("[8, []]\n"), "json"),
    "json_not_utf8": (lambda p, q: q.write_bytes(b"\xff\xfe\x00garbage"), "json"),
}


def _warnings(err: str) -> list[str]:
    return [line for line in err.splitlines() if "warning:" in line]


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_entry_is_rescored_and_rewritten(damage, tmp_path, cache, models, capsys):
    teacher, student = models
    pool = open_image_folder(str(make_image_folder(tmp_path / "pool", n=24, corrupt=True)), unit_files=9)
    assert len(pool.units) == 3
    ref, ref_q, info = score_pool(pool, teacher, student, config=CFG)
    assert info["cache_hits"] == 0 and ref_q
    key = unit_cache_key(pool.units[1], teacher, student, CFG)
    p, q = cache / "scores" / f"{key}.parquet", cache / "scores" / f"{key}.quarantine.json"
    good_bytes, good_marker = p.read_bytes(), json.loads(q.read_text())
    assert {"rows", "bytes", "crc32"} <= set(good_marker)
    damage_fn, named = DAMAGE[damage]
    damage_fn(p, q)
    capsys.readouterr()

    scores, quarantined, info = score_pool(pool, teacher, student, config=CFG)
    err = capsys.readouterr().err
    assert scores.equals(ref) and quarantined == ref_q
    assert info["cache_hits"] == 2 and list(info["decode_pids"]) == [pool.units[1].name]
    warned = _warnings(err)
    assert len(warned) == 1, err
    assert str(p if named == "parquet" else q) in warned[0] and "score cache entry" in warned[0]
    # rewritten: the same bytes and marker as the undamaged entry, trusted again by the next run
    assert p.read_bytes() == good_bytes and json.loads(q.read_text()) == good_marker
    assert read_unit_entry(p, q, pool.units[1].name) is not None
    again, _, info = score_pool(pool, teacher, student, config=CFG)
    assert again.equals(ref) and info["cache_hits"] == 3 and not _warnings(capsys.readouterr().err)


def test_a_marker_that_disagrees_with_its_file_is_a_miss(tmp_path, cache, models, capsys):
    """The Parquet file is intact but the marker records other rows / another unit: the entry does not
    hold what it should, so it is dropped (the JSON named) and rewritten."""
    teacher, student = models
    pool = open_image_folder(str(make_image_folder(tmp_path / "pool", n=16)), unit_files=8)
    ref, _, _ = score_pool(pool, teacher, student, config=CFG)
    keys = [unit_cache_key(u, teacher, student, CFG) for u in pool.units]
    q0, q1 = (cache / "scores" / f"{k}.quarantine.json" for k in keys)
    m0, m1 = json.loads(q0.read_text()), json.loads(q1.read_text())
    q0.write_text(json.dumps({**m0, "rows": m0["rows"] + 1}))
    q1.write_text(json.dumps({**m1, "unit": pool.units[0].name}))
    capsys.readouterr()
    scores, _, info = score_pool(pool, teacher, student, config=CFG)
    warned = _warnings(capsys.readouterr().err)
    assert scores.equals(ref) and info["cache_hits"] == 0
    assert len(warned) == 2 and str(cache / "scores" / f"{keys[0]}.parquet") in warned[0]
    assert str(q1) in warned[1] and "belongs to unit" in warned[1]
    assert json.loads(q0.read_text()) == m0 and json.loads(q1.read_text()) == m1


def test_a_damaged_entry_is_dropped_only_under_its_lock(tmp_path, cache, models, capsys):
    """While another holder has the entry's lock (a run writing it), a run that finds the entry
    damaged waits for the lock instead of removing files under the writer."""
    teacher, student = models
    pool = open_image_folder(str(make_image_folder(tmp_path / "pool", n=16)), unit_files=8)
    ref, _, _ = score_pool(pool, teacher, student, config=CFG)
    key = unit_cache_key(pool.units[1], teacher, student, CFG)
    p, q = cache / "scores" / f"{key}.parquet", cache / "scores" / f"{key}.quarantine.json"
    os.truncate(p, 100)
    holder = acquire(p, wait=True)  # this thread holds it: the run's thread conflicts like another process
    done = []
    run = threading.Thread(target=lambda: done.append(score_pool(pool, teacher, student, config=CFG)))
    run.start()
    try:
        time.sleep(1.5)
        assert run.is_alive() and not done
        assert p.stat().st_size == 100 and q.exists()  # nothing dropped without the lock
    finally:
        holder.release()
        run.join(120)
    assert done and done[0][0].equals(ref) and done[0][2]["cache_hits"] == 1
    assert str(p) in _warnings(capsys.readouterr().err)[0]


def test_cli_select_survives_a_truncated_entry_and_a_malformed_marker(tmp_path, cache, capsys):
    """The reported repro: ``kdata select``, one entry truncated, rerun into a new --out: exit 0, the
    same dataset, the file named; then a malformed quarantine JSON, the same."""
    m = exported_models()
    root = make_parquet_units(tmp_path / "pq", units=3, rows=12)
    args = ["select", "--pool", str(root), "--teacher", m["teacher_pt"], "--student", m["student_pt2"],
            "--method", "kd3", "--budget", "10", "--device", "cpu", "--json"]

    def select(out):
        code = main(args + ["--out", str(tmp_path / out)])
        cap = capsys.readouterr()
        assert code == 0, cap.err
        return json.loads(cap.out), cap.err, tmp_path / out

    first, _, a = select("a")
    markers = {json.loads(f.read_text())["unit"]: f for f in (cache / "scores").glob("*.quarantine.json")}
    assert sorted(markers) == [f"part-{i}.parquet" for i in range(3)]
    victim = markers["part-1.parquet"].with_name(markers["part-1.parquet"].name.replace(".quarantine.json",
                                                                                         ".parquet"))
    os.truncate(victim, 1000)
    markers["part-2.parquet"].write_text('{"n_in": 12, "quarantined": [}')
    report, err, b = select("b")
    warned = _warnings(err)
    assert len(warned) == 2 and str(victim) in warned[0] and str(markers["part-2.parquet"]) in warned[1]
    assert report["counts"] == first["counts"]
    for name in ("decisions.parquet", "data/train-00000-of-00001.parquet"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    _, err, _ = select("c")
    assert not _warnings(err)
