"""Every dataset-producing command goes through the one writer: the same manifest, decisions, card
and report for ``select``, ``dedup`` and ``augment``; provenance names what actually ran."""

from __future__ import annotations

import json
import shutil

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from kdata.core.errors import KdataError
from kdata.dataset.writer import verify
from kdata.pipeline import RunOptions, SelectConfig, run_select
from kdata.pipeline.derive import augment_dataset, dedup_dataset
from kdata.pipeline.output import RunReport


def _manifest(out) -> dict:
    return json.loads((out / "manifest.json").read_text())


def _front_matter(out) -> dict:
    import yaml

    text = (out / "README.md").read_text()
    return yaml.safe_load(text.split("---")[1])


@pytest.fixture(scope="module")
def default_run(tmp_path_factory, builtin_models):
    out = tmp_path_factory.mktemp("default") / "out"
    run_select(SelectConfig(budget="0.3"), out=str(out), opts=RunOptions(device="cpu"))
    return out


def test_default_recipe_records_the_chain_and_balance_it_ran(default_run):
    m = _manifest(default_run)
    assert m["methods"] == ["coverage"] and m["balance"] is None and m["dedup_level"] == "near"
    assert _front_matter(default_run)["kdata"]["balance"] is None


def test_decisions_carry_labels(default_run):
    dec = pq.read_table(default_run / "decisions.parquet")
    labelled = dec.filter(pc.greater_equal(dec.column("label_idx"), 0))
    assert labelled.num_rows > 0 and labelled.column("label").null_count == 0
    names = _manifest(default_run)["class_names"]
    for label, idx in zip(labelled.column("label").to_pylist()[:50], labelled.column("label_idx").to_pylist()[:50]):
        assert label == names[idx]


def test_dedup_output_is_a_full_dataset_with_a_card(default_run, tmp_path):
    report = dedup_dataset(str(default_run), out=str(tmp_path / "d"), level="near")
    assert isinstance(report, RunReport) and report.status == "written"
    out = tmp_path / "d"
    m = _manifest(out)
    assert m["card"]["path"] == "README.md" and (out / "README.md").exists()
    assert m["counts"]["n_in"] == _manifest(default_run)["counts"]["kept"]
    assert m["counts"]["n_in"] == m["counts"]["kept"] + m["counts"]["rejected"]
    assert verify(str(out)) == []
    again = dedup_dataset(str(default_run), out=str(tmp_path / "d"), level="near")
    assert again.status == "already complete" and again.counts == report.counts
    assert "budget_rows" not in again.info  # the source's budget is not dedup's: no "budget not filled" note
    # the manifest says which level ran and what it removed where a selection says it; every row's stage is dedup
    assert m["dedup_level"] == "near" and m["method_info"]["dedup"]["removed"] == report.info["dedup"]["removed"]
    assert set(pq.read_table(out / "decisions.parquet").column("stage").to_pylist()) == {"dedup"}
    card = (out / "README.md").read_text()
    assert f"rows of the curated dataset `{default_run.name}` were kept after `near` dedup" in card
    assert "budget of `None`" not in card and "Keep the top" not in card and str(default_run.parent) not in card


def test_augment_output_is_a_full_dataset_with_a_card(default_run, tmp_path):
    from kdata.augment.hard import HardConfig

    report = augment_dataset(str(default_run), teacher="builtin:digits-teacher", student="builtin:digits-student",
                             out=str(tmp_path / "a"), config=HardConfig(per_sample=1, steps=2, seed=0))
    out = tmp_path / "a"
    m = _manifest(out)
    assert (out / "README.md").exists() and m["card"]["path"] == "README.md"
    c = report.counts
    assert c["n_in"] == c["kept"] == _manifest(default_run)["counts"]["kept"]
    assert c["generated"] == c["generated_kept"] + c["generated_rejected"]
    rows = sum(f["rows"] for f in m["files"])
    assert rows == c["kept"] + c["generated_kept"]
    card = (out / "README.md").read_text()  # the card tells an augmented copy, not a budgeted selection
    assert f"the {c['kept']:,} rows of the curated dataset `{default_run.name}` and {c['generated_kept']:,} HARD" in card
    assert "budget of `None`" not in card and "Keep the top" not in card


def test_augment_defaults_to_the_models_the_manifest_names(default_run, tmp_path):
    from kdata.augment.hard import HardConfig

    report = augment_dataset(str(default_run), out=str(tmp_path / "a"), config=HardConfig(per_sample=1, steps=1))
    models = _manifest(tmp_path / "a")["models"]
    assert report.status == "written"
    assert (models["teacher"]["spec"], models["student"]["spec"]) == ("builtin:digits-teacher", "builtin:digits-student")


def test_augment_refuses_models_of_other_classes(default_run, tmp_path):
    from tests.helpers.real_inputs import exported_models

    four = exported_models()["student4_pt2"]
    with pytest.raises(KdataError, match=r"predicts 4 classes \(0, 1, 2, 3\), but .* over 10 \(0, 1, 2, 3, …\)"):
        augment_dataset(str(default_run), teacher=four, student=four, out=str(tmp_path / "a"))
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("command", ["dedup", "augment"])
def test_derived_datasets_refuse_a_source_changed_since_it_was_written(default_run, tmp_path, command):
    src = tmp_path / "src"
    shutil.copytree(default_run, src)
    shard = next((src / "data").glob("*.parquet"))
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    shard.write_bytes(bytes(raw))
    with pytest.raises(KdataError, match="integrity check failed.*sha256 mismatch"):
        if command == "dedup":
            dedup_dataset(str(src), out=str(tmp_path / "o"), level="exact")
        else:
            augment_dataset(str(src), out=str(tmp_path / "o"))
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("level", ["exact", "near"])
def test_dedup_refuses_an_unknown_device_at_every_level(default_run, tmp_path, level):
    """Only semantic dedup runs a model, but an unknown --device is a mistake at any level: refused, nothing
    written; a known one that this machine lacks matters only where a model runs."""
    with pytest.raises(KdataError, match=r"--device 'tpu': unknown device"):
        dedup_dataset(str(default_run), out=str(tmp_path / "d"), level=level, device="tpu")
    assert not (tmp_path / "d").exists()
    report = dedup_dataset(str(default_run), out=str(tmp_path / "c"), level=level, device="cuda")  # runs no model:
    assert report.counts["kept"] > 0  # a known device that is not here is no reason to refuse
