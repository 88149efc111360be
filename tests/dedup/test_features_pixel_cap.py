"""Dedup features under ``--max-pixels``: an image over the cap (which scoring quarantines from its
header) is never decoded for exact or near dedup either. It hashes its bytes and gets a zero
vector, on every path that computes features (one image, a pool unit by unit, worker processes,
shards), and the feature cache keeps one entry per cap. Real PNGs, real pools, real processes."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from kdata.dedup import features as F
from kdata.dedup.feature_workers import FeatureWorkers
from kdata.models.images import DEFAULT_MAX_PIXELS
from kdata.pools.spec import open_pool
from tests.helpers.real_inputs import digits, png_bytes

WIDE = png_bytes((np.arange(120 * 100) % 251).astype(np.uint8).reshape(100, 120))  # 12,000 pixels


def _raw(data: bytes) -> str:
    return hashlib.sha256(b"raw:" + data).hexdigest()


def test_the_default_cap_is_scorings():
    assert F.DEFAULT_MAX_PIXELS == DEFAULT_MAX_PIXELS


def test_an_image_over_the_cap_has_no_features():
    h, v = F.image_features(WIDE, max_pixels=11_999)
    assert h == _raw(WIDE) and not v.any()
    h, v = F.image_features(WIDE, max_pixels=12_000)  # at the cap: decoded, as scoring decodes it
    assert h != _raw(WIDE) and np.isclose(np.linalg.norm(v), 1)
    assert F.image_features(WIDE, max_pixels=None)[0] == h


def _pool(tmp_path):
    root = tmp_path / "pool" / "a"
    root.mkdir(parents=True)
    (root / "wide.png").write_bytes(WIDE)
    (root / "small.png").write_bytes(png_bytes(digits(1)[0][0]))
    return open_pool(str(tmp_path / "pool"))


def test_pool_features_follow_the_cap_in_process_and_in_workers(tmp_path, monkeypatch):
    monkeypatch.setenv("KDATA_CACHE", str(tmp_path / "cache"))
    pool = _pool(tmp_path)
    ids = np.array(["a/wide.png", "a/small.png"], dtype=object)
    capped = F.pool_features(pool, ids, pixels=True, max_pixels=11_999)
    assert capped[0][0] == _raw(WIDE) and not capped[1][0].any() and capped[1][1].any()
    # another cap is another cache entry, not the capped one served again
    full = F.pool_features(pool, ids, pixels=True)
    assert full[0][0] != _raw(WIDE) and full[1][0].any() and full[0][1] == capped[0][1]
    assert len(list((tmp_path / "cache" / "dedup-features").glob("*.parquet"))) == 2
    monkeypatch.setenv("KDATA_CACHE", str(tmp_path / "cache2"))
    with FeatureWorkers(1) as fw:
        shipped = F.pool_features(pool, ids, pixels=True, workers=fw, max_pixels=11_999)
    assert all(p and os.getpid() not in p for p in fw.pids)  # the cap travelled with the tasks
    assert list(shipped[0]) == list(capped[0]) and np.array_equal(shipped[1], capped[1])


def test_shard_features_follow_the_cap(tmp_path):
    path = tmp_path / "s.parquet"
    pq.write_table(pa.table({"image": [WIDE, png_bytes(digits(1)[0][0])]}), path)
    h, v = F.file_features([path], pixels=True, max_pixels=11_999)
    assert h[0] == _raw(WIDE) and not v[0].any() and v[1].any()
    assert F.file_features([path], pixels=True)[0][0] != _raw(WIDE)
