"""Dedup features computed by worker processes (``kdata.dedup.feature_workers``): the same bits as
the serial path over real pools and shards, the same processes for every unit of a run (started
once, stopped by ``close``), and a corrupt image handled in a worker as in-process."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kdata.dedup import features as F
from kdata.dedup.feature_workers import FEATURE_MIN_ROWS, FeatureWorkers, resolve_feature_workers
from kdata.dedup.text import text_hash
from kdata.pools.base import PoolUnit
from kdata.pools.readers import open_image_folder
from kdata.pools.spec import open_pool
from tests.helpers.real_inputs import digits, make_image_folder, make_parquet_units, png_bytes


def _parquet_pool(tmp_path):
    return open_pool(str(make_parquet_units(tmp_path / "pq", units=3, rows=130)))


def _folder_pool(tmp_path):
    return open_image_folder(str(make_image_folder(tmp_path / "folder", n=60, corrupt=True)), unit_files=20)


def _in_memory_pool(tmp_path):
    """Units without addressable rows (read whole): tasks ship only their own rows (``plan.part``)."""
    pool = _parquet_pool(tmp_path)
    units = [PoolUnit(name=u.name, read=u.read, fingerprint=u.fingerprint) for u in pool.units]
    return type(pool)(spec=pool.spec, units=units)


def _bits(hashes, vecs) -> tuple[list, bytes]:
    return list(hashes), np.ascontiguousarray(vecs).tobytes()


@pytest.mark.parametrize("make", [_parquet_pool, _folder_pool, _in_memory_pool])
def test_features_computed_by_two_workers_are_the_serial_bits(make, tmp_path, monkeypatch):
    """Every unit computed by 2 worker processes (several chunks a unit for the Parquet ones) gives
    the hashes and the float32 embeddings, bit for bit, of the serial in-process path, candidates in
    any order; so do the cache entries each writes."""
    pool = make(tmp_path)
    ids = np.array([s for u in pool.units for s in u.sample_ids().to_pylist()][::-1], dtype=object)
    monkeypatch.setenv("KDATA_CACHE", str(tmp_path / "serial"))
    serial = F.pool_features(pool, ids, pixels=True, workers=0)
    monkeypatch.setenv("KDATA_CACHE", str(tmp_path / "parallel"))
    with FeatureWorkers(2) as fw:
        parallel = F.pool_features(pool, ids, pixels=True, workers=fw)
    assert all(p and os.getpid() not in p for p in fw.pids)  # computed by the workers, not here
    assert _bits(*parallel) == _bits(*serial)
    entries = [sorted((tmp_path / d / "dedup-features").glob("*.parquet")) for d in ("serial", "parallel")]
    assert [p.name for p in entries[0]] == [p.name for p in entries[1]] and len(entries[0]) == len(pool.units)
    assert all(pq.read_table(a).equals(pq.read_table(b)) for a, b in zip(*entries))


def test_a_run_starts_its_workers_once_for_every_unit(tmp_path, monkeypatch):
    """Four units, one run: the processes that computed each unit's features are the same two (never
    this process, never new ones per unit), the run's second call reuses them, and ``close`` stops them."""
    monkeypatch.setenv("KDATA_CACHE", str(tmp_path / "cache"))
    pool = open_pool(str(make_parquet_units(tmp_path / "pq", units=4, rows=100)))
    ids = np.array([s for u in pool.units for s in u.sample_ids().to_pylist()], dtype=object)
    fw = FeatureWorkers(2)
    F.pool_features(pool, ids, pixels=False, workers=fw)
    assert len(fw.pids) == len(pool.units) and all(fw.pids)
    seen = set().union(*fw.pids)
    assert len(seen) <= 2 and os.getpid() not in seen
    monkeypatch.setenv("KDATA_CACHE", str(tmp_path / "other-cache"))  # nothing cached: computed again
    F.pool_features(pool, ids, pixels=True, workers=fw)
    assert set().union(*fw.pids) == seen and fw.started
    fw.close()
    assert not fw.started
    for pid in seen:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_a_corrupt_image_gets_its_raw_bytes_hash_and_a_zero_vector_in_a_worker(tmp_path):
    """Garbage, truncated and empty files are hashed on their bytes with a zero embedding by a worker,
    as in-process; the good images around them keep their own features."""
    root = make_image_folder(tmp_path / "folder", n=12, corrupt=True)
    plan = open_image_folder(str(root), unit_files=100).units[0].plan()
    n = plan.num_rows
    with FeatureWorkers(2) as fw:
        (ids, hashes, vecs), = fw.map(F.rows_features, [(plan.part(0, n), 0, n, True)])
    assert os.getpid() not in fw.pids[0]
    bad = {"3/garbage.jpg", "3/truncated.jpg", "7/empty.png"}
    assert bad <= set(ids)
    for i, h, v in zip(ids, hashes, vecs):
        if i in bad:
            assert h == hashlib.sha256(b"raw:" + (root / i).read_bytes()).hexdigest() and not v.any()
        else:
            want_h, want_v = F.image_features((root / i).read_bytes())
            assert h == want_h and v.tobytes() == want_v.tobytes() and v.any()


def test_shard_features_by_row_group_in_workers_are_the_serial_bits(tmp_path):
    """``kdata dedup``'s ``file_features``: one task per (shard, row group), results placed by ``at``
    exactly as the serial path places them."""
    x, _ = digits(130)
    paths = []
    for k, (a, b) in enumerate([(0, 70), (70, 130)]):
        paths.append(tmp_path / f"train-{k}.parquet")
        images = [png_bytes(im) for im in x[a:b]]
        images[3] = b"not an image"
        pq.write_table(pa.table({"sample_id": [f"s{i}" for i in range(a, b)], "image": images}), paths[-1],
                       row_group_size=16)
    at = np.random.default_rng(0).permutation(130)
    serial = F.file_features(paths, pixels=True, at=at, workers=0)
    with FeatureWorkers(2) as fw:
        parallel = F.file_features(paths, pixels=True, at=at, workers=fw)
    assert len(fw.pids) == 1 and os.getpid() not in fw.pids[0]
    assert _bits(*parallel) == _bits(*serial)


def test_a_text_unit_is_hashed_in_this_process(tmp_path, monkeypatch):
    """A JSONL text unit has no addressable rows and nothing costly to compute: no worker starts."""
    monkeypatch.setenv("KDATA_CACHE", str(tmp_path / "cache"))  # computed, not found in a shared cache
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps({"sample_id": f"t{i}", "text": f"Text  number {i}"}) + "\n"
                            for i in range(50)))
    pool = open_pool(str(path))
    ids = np.array(pool.units[0].sample_ids().to_pylist(), dtype=object)
    with FeatureWorkers(2) as fw:
        hashes, _ = F.pool_features(pool, ids, pixels=False, workers=fw)
        assert fw.pids == [{os.getpid()}] and not fw.started
    assert list(hashes) == [text_hash(f"text number {i}") for i in range(50)]


def test_auto_workers_stay_in_process_for_small_inputs():
    """``--workers auto``: no worker below ``FEATURE_MIN_ROWS`` rows; a number is taken as given."""
    assert resolve_feature_workers("auto", rows=FEATURE_MIN_ROWS - 1) == 0
    assert resolve_feature_workers("3", rows=10) == 3 and resolve_feature_workers(0, rows=10**7) == 0
    big = resolve_feature_workers("auto", rows=10**6)
    assert big == 0 or 2 <= big <= 8
