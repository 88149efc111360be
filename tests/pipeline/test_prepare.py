"""kdata as a Python library: the stage-by-stage API checks what ``run_select`` checks, method
options reach their method or are refused, the caller's torch RNG is left alone, and the manifest
records the soft labels actually written."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
import torch

from kdata.core.errors import KdataError
from kdata.dataset.schema import kdata_metadata
from kdata.pipeline.config import RunOptions, SelectConfig
from kdata.pipeline.prepare import prepare
from kdata.pipeline.run import run_select


@pytest.mark.parametrize("cfg,opts,match", [
    (SelectConfig(method="kd3", budget="10", temperature=-1.0), RunOptions(), r"^--temperature -1.0: must be"),
    (SelectConfig(method="kd3", budget="10", topk=0), RunOptions(), r"^--topk 0: expected an integer"),
    (SelectConfig(method="kd3", budget="-5"), RunOptions(), r"^--budget -5: must be positive"),
    (SelectConfig(method="kd3", seed=None), RunOptions(), r"^--seed None: must be an integer"),
    (SelectConfig(method="kd3", method_options={"kd3": {"treshold": 0.9}}), RunOptions(),
     r"^method_options: kd3 has no option 'treshold'"),
    (SelectConfig(method="kd3"), RunOptions(batch_size=0), r"^--batch-size 0: must be"),
    (SelectConfig(method="kd3"), RunOptions(device="tpu"), r"^--device 'tpu'"),
])
def test_prepare_refuses_what_run_select_refuses_before_any_work(cfg, opts, match, tmp_path, monkeypatch):
    """prepare → score → finish wrote a dataset with inverted soft labels for temperature −1 and failed
    late with a TypeError for topk 0: the stage API now checks the options first."""
    monkeypatch.setenv("KDATA_CACHE", str(tmp_path / "cache"))
    loaded = []
    with pytest.raises(KdataError, match=match) as err:
        prepare(cfg, opts=opts, load=lambda spec, device: loaded.append(spec))
    assert "\n" not in str(err.value)
    assert loaded == [] and not (tmp_path / "cache").exists()  # no model loaded, nothing scored


def test_method_options_reach_the_method_and_typos_are_refused(tmp_path, builtin_models):
    right = run_select(SelectConfig(method="kd3", budget="300", method_options={"kd3": {"threshold": 0.99}}),
                       out=str(tmp_path / "right"), opts=RunOptions(device="cpu"))
    assert right.counts["kept"] < 300 and right.counts["rejected_by_reason"]["kd3_low_confidence"] > 0
    for options, match in (({"kd3": {"treshold": 0.99}}, "kd3 has no option 'treshold' (known: threshold, weight)"),
                           ({"rad": {"threshold": 0.99}}, "rad is not in the method chain (kd3)")):
        out = tmp_path / "wrong"
        with pytest.raises(KdataError, match=f"^method_options: {match.replace('(', '[(]').replace(')', '[)]')}$"):
            run_select(SelectConfig(method="kd3", budget="300", method_options=options), out=str(out),
                       opts=RunOptions(device="cpu"))
        assert not out.exists()


def test_prepare_leaves_the_callers_torch_rng_alone(builtin_models):
    """The built-in loader built DigitsNet with a random init (then overwritten by the weights)
    from the caller's global RNG."""
    torch.manual_seed(0)
    want = torch.rand(3)
    torch.manual_seed(0)
    prep = prepare(SelectConfig(method="kd3"), opts=RunOptions(device="cpu"))
    assert torch.equal(torch.rand(3), want)
    assert prep.methods == ["kd3"]


def test_manifest_records_the_soft_labels_written_not_more(tmp_path, builtin_models):
    """topk 20 on a 10-class pool writes 10 soft labels per row: the manifest and the shards' metadata
    say 10; the hashed config keeps the 20 that was asked for."""
    out = tmp_path / "out"
    run_select(SelectConfig(method="kd3", budget="20", topk=20), out=str(out), opts=RunOptions(device="cpu"))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["topk"] == 10 and manifest["config"]["topk"] == 20
    shard = sorted((out / "data").glob("*.parquet"))[0]
    t = pq.read_table(shard)
    assert kdata_metadata(t.schema)["topk"] == 10
    assert {len(v) for v in t.column("teacher_topk_prob").to_pylist()} == {10}
