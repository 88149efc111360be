"""Methods through the real pipeline on the built-in pool: options wiring (reference, domains)."""

import json

import pyarrow.parquet as pq

from kdata.pipeline.config import RunOptions, SelectConfig
from kdata.pipeline.run import run_select


def test_miniplm_reference_ddk_domains_and_rad_queries(tmp_path, builtin_models):
    opts = RunOptions(device="cpu")
    r = run_select(SelectConfig(method="miniplm", reference="builtin:digits-student", budget="0.1"),
                   out=str(tmp_path / "m"), opts=opts)
    assert r.counts["kept"] == 145 and r.info["method_info"]["miniplm"]["reference"] == "reference model"
    r = run_select(SelectConfig(method="ddk", budget="0.2"), out=str(tmp_path / "d"), opts=opts)
    doms = r.info["method_info"]["ddk"]["domains"]
    assert sum(d["kept"] for d in doms.values()) == r.counts["kept"] == 291
    assert len(doms) >= 2  # the built-in pool has several domains
    r = run_select(SelectConfig(method="rad", budget="50"), out=str(tmp_path / "r"), opts=opts)
    manifest = json.loads((tmp_path / "r" / "manifest.json").read_text())
    assert manifest["method_info"]["rad"]["teacher_queries"] == 50
    shard = pq.read_table(next((tmp_path / "r" / "data").glob("*.parquet")))
    assert "score_rad" in shard.column_names and shard.column("image").null_count == 0
