"""The ``curate`` flow on a text pool with tiny transformers causal LMs (built in the test): one cached
scoring task per unit through the text scorer, and a dataset byte-identical to ``kdata select``'s."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

pytest.importorskip("transformers")

from kdata.dataset.writer import read_manifest, read_shards, verify  # noqa: E402
from tests.helpers.text_models import text_assets, write_jsonl  # noqa: E402


@pytest.fixture(scope="module")
def text_pool(tmp_path_factory):
    """A directory of two JSONL units (two scoring tasks) and the tiny LMs of ``text_assets``."""
    d = text_assets()
    root = tmp_path_factory.mktemp("textflow") / "pool"
    root.mkdir()
    write_jsonl(root / "a.jsonl", n=20)
    lines = [json.loads(x) for x in write_jsonl(root / "b.tmp", n=40).read_text().splitlines()][20:]
    (root / "b.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n" + '{"sample_id": "e", "text": ""}\n')
    (root / "b.tmp").unlink()
    return root, d


def _select_args(root, d, out) -> list[str]:
    return ["--pool", str(root), "--teacher", f"hf:{d / 't'}", "--student", f"hf:{d / 's'}",
            "--reference", f"hf:{d / 'r'}", "--method", "miniplm", "--budget", "0.3", "--out", str(out)]


def test_curate_flow_on_text_matches_kdata_select(prefect_api, text_pool, tmp_path, monkeypatch):
    import importlib

    from kdata.cli import main

    monkeypatch.setenv("KDATA_CACHE", str(tmp_path / "cache"))  # the flow scores; select then reads its cache
    curate = importlib.import_module("kdata.flows.curate")
    root, d = text_pool
    flow_out = tmp_path / "flow"
    assert curate.main([*_select_args(root, d, flow_out), "--device", "cpu", "--json"]) == 0
    sel = tmp_path / "select"
    assert main(["select", *_select_args(root, d, sel), "--device", "cpu", "--quiet"]) == 0
    mf, ms = read_manifest(flow_out), read_manifest(sel)
    assert mf["counts"] == ms["counts"] and mf["config_hash"] == ms["config_hash"]
    assert mf["counts"]["n_in"] == 41 and mf["counts"]["quarantined"] == 1 and mf["counts"]["kept"] == 12
    assert [f["sha256"] for f in mf["files"]] == [f["sha256"] for f in ms["files"]]  # byte for byte
    assert mf["scoring"] == ms["scoring"] and mf["scoring"]["kind"] == "causal_lm"
    assert mf["models"] == ms["models"] and "reference" in mf["models"]
    assert read_shards(flow_out).equals(read_shards(sel))
    assert pq.read_table(flow_out / "decisions.parquet").equals(pq.read_table(sel / "decisions.parquet"))
    assert "teacher_topk_ids" in read_shards(flow_out).column_names and verify(flow_out) == []
    assert ms["score_cache_hits"] == 2  # select found both units in the cache the flow's tasks wrote

    # a rerun of the flow: every text scoring task is a Prefect cache hit
    state = curate.curate(select=mf["config"], out=str(tmp_path / "again"), run={"device": "cpu"},
                          return_state=True)
    assert state.is_completed()
    result = state.result()
    assert set(result["units"].values()) == {"Cached"} and len(result["units"]) == 2
    assert [f["sha256"] for f in read_manifest(tmp_path / "again")["files"]] == [f["sha256"] for f in mf["files"]]
    from kdata.flows.summary import summary  # causal-LM rows have no class: the run summary shows no class table

    markdown, rows = summary(result, units=[], states={}, failed=[])
    assert "class (teacher)" not in markdown and not [r for r in rows if r["kind"] == "class_balance"]
    assert f"kept {mf['counts']['kept']}" in markdown


def test_distill_flow_trains_a_text_student_and_reports_perplexity(prefect_api, text_pool, tmp_path):
    import importlib

    from kdata.cli import main

    root, d = text_pool
    data = tmp_path / "curated"
    assert main(["select", *_select_args(root, d, data), "--device", "cpu", "--quiet"]) == 0
    distill = importlib.import_module("kdata.flows.distill")
    state = distill.distill(data=str(data), student=f"hf:{d / 's'}", eval=str(root / "a.jsonl"), epochs=2,
                            device="cpu", out=str(tmp_path / "student"), return_state=True)
    assert state.is_completed()
    res = state.result()
    assert res["kind"] == "causal_lm" and res["metric"] == "perplexity" and res["n_train"] == 12
    assert res["perplexity_before"] > 0 and res["perplexity_after"] > 0
    assert res["verdict"] in ("improved", "no gain", "worse") and "perplexity on" in res["message"]
    assert res["worse"] == (res["perplexity_after"] > res["perplexity_before"])
    assert (tmp_path / "student" / "model.safetensors").is_file()
