"""The pipeline end to end on the embedded default: shards, manifest, accounting, readers."""

import json
import os

import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from kdata.core.atomic import sha256_file
from kdata.dataset.schema import SHARD_SCHEMA, kdata_metadata, validate_decisions, validate_shard
from kdata.core.errors import KdataError
from kdata.pipeline.config import RunOptions, SelectConfig
from kdata.pipeline.run import run_select
from kdata.dataset.writer import verify


def test_shards_manifest_and_accounting(demo_run):
    manifest = json.loads((demo_run / "manifest.json").read_text())
    c = manifest["counts"]
    assert c["n_in"] == 1457
    assert c["n_in"] == c["kept"] + c["rejected"] + c["quarantined"]
    assert c["kept"] == int(0.3 * 1457)
    assert sum(c["rejected_by_reason"].values()) == c["rejected"]
    for key in ("files", "schema_version", "config", "config_hash", "seed", "kdata_version", "models"):
        assert key in manifest
    assert manifest["models"]["teacher"]["checksum"].startswith("sha256:")
    assert manifest["config"]["teacher"] == "builtin:digits-teacher"
    rows = 0
    for f in manifest["files"]:
        path = demo_run / f["path"]
        assert path.name.startswith("train-00000-of-") and path.suffix == ".parquet"
        assert sha256_file(path) == f["sha256"] and path.stat().st_size == f["bytes"]
        md = pq.ParquetFile(path).metadata
        assert all(md.row_group(i).num_rows <= manifest["config"]["row_group_rows"] for i in range(md.num_row_groups))
        schema = pq.read_schema(path)
        validate_shard(schema, where=str(path))
        meta = kdata_metadata(schema)
        assert meta["temperature"] == 1.0 and meta["schema_version"] == "1.0"
        rows += f["rows"]
    assert rows == c["kept"]
    assert verify(demo_run) == []
    # no staging leftovers
    assert not [p for p in demo_run.parent.iterdir() if "kdata-staging" in p.name]


def test_decisions_cover_every_input_sample_once(demo_run):
    dec = pq.read_table(demo_run / "decisions.parquet")
    validate_decisions(dec.schema, where="decisions")
    ids = dec.column("sample_id").to_pylist()
    assert len(ids) == len(set(ids)) == 1457
    d = dec.to_pandas()
    assert set(d.decision) <= {"kept", "rejected", "quarantined"}
    assert d[d.decision == "rejected"].reason.notna().all()
    assert d[d.decision == "kept"].reason.isna().all()
    shard_ids = set(ds.dataset(demo_run / "data").to_table(columns=["sample_id"]).column("sample_id").to_pylist())
    assert shard_ids == set(d[d.decision == "kept"].sample_id)


def test_curated_rows_carry_soft_labels_payload_and_provenance(demo_run):
    t = ds.dataset(demo_run / "data", format="parquet").to_table()
    row = t.slice(0, 1).to_pylist()[0]
    assert row["image"][:4] == b"\x89PNG"
    assert len(row["teacher_topk_idx"]) == len(row["teacher_topk_prob"]) == 5
    assert row["teacher_topk_prob"] == sorted(row["teacher_topk_prob"], reverse=True)
    assert 0.5 < sum(row["teacher_topk_prob"]) <= 1.0001
    assert row["kind"] == "original" and row["source"] in {"site-a", "site-b", "site-c"}
    assert "score_kd3" in t.column_names and row["rank"] == 0
    assert set(SHARD_SCHEMA.names) <= set(t.column_names)


def test_shards_open_with_other_readers_without_kdata(demo_run):
    import duckdb
    import pandas as pd
    import polars as pl
    from datasets import load_dataset

    n = json.loads((demo_run / "manifest.json").read_text())["counts"]["kept"]
    glob = str(demo_run / "data" / "*.parquet")
    assert len(pd.read_parquet(demo_run / "data")) == n
    assert duckdb.sql(f"select count(*) from read_parquet('{glob}')").fetchall()[0][0] == n
    assert pl.read_parquet(glob).height == n
    import pyarrow.dataset as pads

    assert pads.dataset(str(demo_run / "data"), format="parquet").count_rows() == n
    hf = load_dataset("parquet", data_files={"train": glob}, split="train",
                      cache_dir=str(demo_run.parent / "hf-cache"))
    assert hf.num_rows == n and "teacher_topk_prob" in hf.column_names


def test_rerun_same_config_is_a_no_op_and_different_config_refused(demo_run):
    before = {p.name: p.stat().st_mtime_ns for p in (demo_run / "data").iterdir()}
    rep = run_select(SelectConfig(method="kd3", budget="0.3"), out=str(demo_run), opts=RunOptions(device="cpu"))
    assert rep.status == "already complete"
    assert before == {p.name: p.stat().st_mtime_ns for p in (demo_run / "data").iterdir()}
    with pytest.raises(KdataError, match="already holds a different run"):
        run_select(SelectConfig(method="random", budget="0.3"), out=str(demo_run))


def test_failure_leaves_nothing_half_written(tmp_path, monkeypatch, builtin_models):
    import kdata.pipeline.output as pl

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(pl, "write_decisions", boom)
    out = tmp_path / "out"
    with pytest.raises(OSError):
        run_select(SelectConfig(method="random", budget="100"), out=str(out))
    assert not out.exists()
    assert os.listdir(tmp_path) == []


def test_score_cache_is_used_on_rerun(tmp_path, builtin_models):
    a = run_select(SelectConfig(method="random", budget="50", seed=3), out=str(tmp_path / "a"))
    b = run_select(SelectConfig(method="random", budget="50", seed=4), out=str(tmp_path / "b"))
    assert b.info["score_cache_hits"] == b.info["units"] >= 1
    assert a.counts["kept"] == b.counts["kept"] == 50
