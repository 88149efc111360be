"""A damaged dedup feature-cache entry ($KDATA_CACHE/dedup-features) is a miss, never a failure nor a
silently wrong answer: real entries are damaged on disk, then a real run gives the same hashes and
pixel embeddings (and the same curated dataset) as an undamaged one, names the dropped file in one
warning line and rewrites the entry."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kdata.dedup import features as F
from kdata.pools.base import PoolUnit
from kdata.pools.readers import open_image_folder
from tests.helpers.damage import garbage_inside, rewrite_parquet
from tests.helpers.real_inputs import digits, exported_models, make_image_folder, png_bytes

pytestmark = pytest.mark.usefixtures("warning_lines")  # kdata's warnings read from stderr, as the CLI prints them


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KDATA_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


DAMAGE = {
    "truncated": (lambda p, m: os.truncate(p, p.stat().st_size // 3), "parquet"),
    "garbage_inside": (lambda p, m: garbage_inside(p, n=128, key=0x5A), "parquet"),
    "not_parquet": (lambda p, m: p.write_bytes(b"PAR1" + os.urandom(500)), "parquet"),
    "fewer_rows": (lambda p, m: rewrite_parquet(p, lambda t: t.slice(0, 2)), "parquet"),
    "wrong_schema": (lambda p, m: rewrite_parquet(p, lambda t: t.drop_columns(["pixels"])), "parquet"),
    "parquet_missing": (lambda p, m: p.unlink(), "parquet"),
    "bad_json": (lambda p, m: m.write_text('{"rows": 8, "bytes": '), "json"),
    "json_without_checksum": (lambda p, m: m.write_text('{"unit": "x"}'), "json"),
}


def _warnings(err: str) -> list[str]:
    return [line for line in err.splitlines() if "warning:" in line]


def _entries(cache):
    """unit name → (Parquet file, marker) of each dedup-features entry."""
    out = {}
    for marker in (cache / "dedup-features").glob("*.json"):
        out[json.loads(marker.read_text())["unit"]] = (marker.with_suffix(".parquet"), marker)
    return out


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_feature_entry_is_recomputed_and_rewritten(damage, tmp_path, cache, capsys):
    root = make_image_folder(tmp_path / "pool", n=24)
    pool = open_image_folder(str(root), unit_files=8)
    ids = np.array(pool.read_all().column("sample_id").to_pylist(), dtype=object)
    ref_h, ref_v = F.pool_features(pool, ids, pixels=True)
    name = pool.units[1].name
    p, m = _entries(cache)[name]
    good_bytes, good_marker = p.read_bytes(), json.loads(m.read_text())
    damage_fn, named = DAMAGE[damage]
    damage_fn(p, m)
    capsys.readouterr()

    h, v = F.pool_features(pool, ids, pixels=True)
    err = capsys.readouterr().err
    assert list(h) == list(ref_h) and np.array_equal(v, ref_v)
    warned = _warnings(err)
    assert len(warned) == 1 and str(p if named == "parquet" else m) in warned[0], err
    assert "dedup feature cache entry" in warned[0]
    assert p.read_bytes() == good_bytes and json.loads(m.read_text()) == good_marker  # rewritten
    # and trusted again: the next run decodes nothing and warns about nothing

    def unreadable():
        raise AssertionError("decoded again although the unit's features are cached")

    cached = [PoolUnit(name=u.name, read=unreadable, fingerprint=u.fingerprint) for u in pool.units]
    h2, v2 = F.pool_features(type(pool)(spec=pool.spec, units=cached), ids, pixels=True)
    assert list(h2) == list(ref_h) and np.array_equal(v2, ref_v) and not _warnings(capsys.readouterr().err)


def test_cli_select_with_near_dedup_survives_damaged_feature_entries(tmp_path, cache, capsys):
    """``kdata select --dedup near`` over a pool whose cached features were damaged in place (bytes
    changed inside a page: the old cache read them back as wrong embeddings): the same dataset."""
    from kdata.cli import main

    m = exported_models()
    x, y = digits(30)
    root = tmp_path / "pq"
    root.mkdir()
    for i in range(3):
        rows = list(range(i * 10, (i + 1) * 10))
        images = [png_bytes(x[j]) for j in rows] + [png_bytes(x[rows[0]])]  # one exact duplicate per unit
        pq.write_table(pa.table({"image": images, "label": [str(y[j]) for j in rows] + [str(y[rows[0]])]}),
                       root / f"part-{i}.parquet")
    args = ["select", "--pool", str(root), "--teacher", m["teacher_pt"], "--student", m["student_pt2"],
            "--method", "kd3", "--budget", "20", "--dedup", "near", "--device", "cpu", "--json"]

    def select(out):
        code = main(args + ["--out", str(tmp_path / out)])
        cap = capsys.readouterr()
        assert code == 0, cap.err
        return cap.err, tmp_path / out

    _, a = select("a")
    entries = _entries(cache)
    assert sorted(entries) == [f"part-{i}.parquet" for i in range(3)]
    garbage_inside(entries["part-0.parquet"][0])
    entries["part-2.parquet"][1].write_text("{not json")
    err, b = select("b")
    warned = _warnings(err)
    assert len(warned) == 2, err
    assert str(entries["part-0.parquet"][0]) in warned[0] and str(entries["part-2.parquet"][1]) in warned[1]
    for name in ("decisions.parquet", "data/train-00000-of-00001.parquet"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    dec = pq.read_table(b / "decisions.parquet").column("reason").to_pylist()
    assert sum(1 for r in dec if r and r.startswith("duplicate_of:")) >= 3
    err, _ = select("c")
    assert not _warnings(err)
