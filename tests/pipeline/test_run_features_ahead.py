"""Dedup's image features computed on a thread while the pool is scored (``kdata.pipeline.run.features_ahead``,
on by default with CUDA): every unit's features are cached when scoring returns, and the run's decisions
are those of a run that computes them afterwards. Real image folder, real models, real cache."""

from __future__ import annotations

import pyarrow.parquet as pq

from kdata.pipeline import RunOptions, SelectConfig
from kdata.pipeline.curate import finish
from kdata.pipeline.prepare import prepare
from kdata.pipeline.run import score
from tests.helpers.real_inputs import make_image_folder


def _run(pool, out, *, overlap: bool, cache):
    cfg = SelectConfig(pool=str(pool), budget="0.5")  # the default recipe: exact + near dedup
    opts = RunOptions(device="cpu")
    prep = prepare(cfg, opts=opts)
    scored = score(prep, opts=opts, overlap_features=overlap)
    cached = len(list((cache / "dedup-features").glob("*.parquet")))  # before dedup itself runs
    return prep, cached, finish(prep, scored, out=str(out))


def test_features_made_while_scoring_are_cached_and_change_nothing(tmp_path, monkeypatch):
    pool = make_image_folder(tmp_path / "pool", n=80)
    monkeypatch.setenv("KDATA_CACHE", str(tmp_path / "ahead"))
    prep, cached, ahead = _run(pool, tmp_path / "a", overlap=True, cache=tmp_path / "ahead")
    assert cached == len(prep.pool.units) >= 1
    monkeypatch.setenv("KDATA_CACHE", str(tmp_path / "after"))
    _, cached, after = _run(pool, tmp_path / "b", overlap=False, cache=tmp_path / "after")
    assert cached == 0
    assert ahead.counts == after.counts and ahead.counts["rejected_by_reason"]
    a, b = (pq.read_table(d / "decisions.parquet").sort_by("sample_id") for d in (tmp_path / "a", tmp_path / "b"))
    assert a.column("decision").equals(b.column("decision")) and a.column("reason").equals(b.column("reason"))
