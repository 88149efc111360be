"""Bad input to the trainers is one ``KdataError`` line before any work: the options of ``TrainConfig`` and
``TextTrainConfig`` (``kdata.training.config``), a damaged dataset found by the integrity check before
any shard is read (``kdata.training.source``), null soft labels and shards with no image or text naming
the shard. Real selections written by the pipeline, damaged on disk (``tests.training.tamper``)."""

from __future__ import annotations

import math

import pytest

from kdata.core.errors import KdataError
from kdata.training.config import TextTrainConfig, TrainConfig
from kdata.training.shard_dataset import ShardDataset
from kdata.training.source import check_manifest, verify_source
from kdata.training.text import train_text
from kdata.training.text_data import shard_kind
from tests.training.tamper import copy_run, null_first, rewrite_shard, set_manifest


@pytest.mark.parametrize("options,says", [
    ({"lr": -1.0}, "--lr -1.0: must be a finite number > 0"),
    ({"lr": math.nan}, "--lr nan: must be a finite number > 0"),
    ({"lr": 0}, "--lr 0: must be a finite number > 0"),
    ({"epochs": 0}, "--epochs 0: must be at least 1"),
    ({"epochs": 2.5}, "--epochs 2.5: must be a whole number ≥ 1"),
    ({"steps": -1}, "--steps -1: must be at least 0"),
    ({"batch_size": 0}, "--batch-size 0: must be at least 1"),
    ({"seed": -1}, "--seed -1: must be a whole number from 0 to 2**64 - 1"),
    ({"seed": 2**64}, "must be a whole number from 0 to 2**64 - 1"),
    ({"seed": True}, "--seed True: must be a whole number"),
    ({"temperature": 0.0}, "--temperature 0.0: must be a finite number > 0"),
    ({"temperature": math.inf}, "--temperature inf: must be a finite number > 0"),
    ({"alpha": 1.5}, "--alpha 1.5: must be within [0, 1]"),
    ({"alpha": math.nan}, "--alpha nan: must be within [0, 1]"),
    ({"workers": -1}, "--workers -1: expected auto or a whole number ≥ 0"),
    ({"workers": "many"}, "--workers many: expected auto or a whole number ≥ 0"),
    ({"loss": "mse"}, "--loss mse: expected kd or nkd"),
    ({"reselect_every": -1}, "--reselect-every -1: must be at least 0"),
    ({"reselect_threshold": 2.0}, "--reselect-threshold 2.0: must be within [0, 1]"),
    ({"weight_decay": -0.1}, "weight_decay -0.1: must be a finite number ≥ 0"),
])
def test_train_config_refuses_each_bad_option_in_one_line(options, says):
    with pytest.raises(KdataError) as e:
        TrainConfig(**options)
    assert says in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("options,says", [
    ({"lr": -1e-3}, "--lr -0.001: must be a finite number > 0"),
    ({"epochs": 0}, "--epochs 0: must be at least 1"),
    ({"batch_size": 0}, "--batch-size 0: must be at least 1"),
    ({"seed": -3}, "--seed -3: must be a whole number from 0"),
    ({"alpha": -0.5}, "--alpha -0.5: must be within [0, 1]"),
    ({"temperature": -1.0}, "--temperature -1.0: must be a finite number > 0"),
    ({"max_length": 0}, "max_length 0: must be at least 1"),
])
def test_text_train_config_refuses_each_bad_option_in_one_line(options, says):
    with pytest.raises(KdataError, match=None) as e:
        TextTrainConfig(**options)
    assert says in str(e.value)


def test_good_configs_pass_and_text_epochs_may_be_zero_with_steps():
    assert TrainConfig(lr=1e-3, seed=2**64 - 1, workers=0, alpha=0.0, steps=5).steps == 5
    assert TextTrainConfig(epochs=0, steps=3).steps == 3
    assert TextTrainConfig().lr is None  # unset: chosen by the student


@pytest.fixture
def run(demo_run, tmp_path):
    """A fresh copy of a real ``kdata select`` output."""
    return copy_run(demo_run, tmp_path / "sel")


def test_a_shard_path_outside_the_dataset_is_refused_before_any_file_is_read(run, tmp_path):
    (tmp_path / "outside.txt").write_text("not parquet\n")  # what a reader opening it would report
    set_manifest(run, lambda m: m["files"][0].update(path=str(tmp_path / "outside.txt")))
    for check in (verify_source, check_manifest):
        with pytest.raises(KdataError) as e:
            check(run)
        assert "points outside the dataset" in str(e.value) and "cannot read Parquet" not in str(e.value)
    # the text trainer checks before it looks at the shards' kind
    with pytest.raises(KdataError, match="integrity check failed, not training on it: .*points outside"):
        train_text(shards=run, student="builtin:text-student", eval=None, out=tmp_path / "st")
    assert not (tmp_path / "st").exists()


@pytest.mark.parametrize("field,value,says", [
    ("files", "oops", "'files' must be a list of file entries"),
    ("models", "x", "'models' must be an object (or null), not str"),
])
def test_manifest_fields_of_the_wrong_type_are_one_line_even_without_verify(run, field, value, says):
    set_manifest(run, lambda m: m.__setitem__(field, value))
    for check in (verify_source, check_manifest):
        with pytest.raises(KdataError, match="manifest.json: " + says.replace("(", r"\(").replace(")", r"\)")):
            check(run)


def test_a_dataset_changed_after_it_was_verified_is_verified_again(run):
    assert verify_source(run) is True
    assert verify_source(run) is True  # unchanged: intact
    shard = run / "data" / sorted(p.name for p in (run / "data").glob("*.parquet"))[0]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, another mtime
    shard.write_bytes(bytes(data))
    with pytest.raises(KdataError, match="sha256 mismatch"):
        verify_source(run)


def test_null_soft_labels_name_the_shard_and_column(run):
    shard = rewrite_shard(run, lambda t: null_first(t, "teacher_topk_idx"))
    assert verify_source(run)  # checksums recomputed: only the reader can tell
    with pytest.raises(KdataError) as e:
        ShardDataset(run, input_size=(8, 8), mean=(0.5,), std=(0.5,))
    assert str(e.value).startswith(f"{shard}: column 'teacher_topk_idx' has nulls (row 0)")


def test_shards_without_an_image_column_or_any_text_say_so(run):
    shard = rewrite_shard(run, lambda t: t.drop_columns(["image"]))
    with pytest.raises(KdataError) as e:
        shard_kind(run)
    assert str(e.value).startswith(f"{shard}: no 'image' column, and its 'text' column holds no text")


@pytest.mark.parametrize("make", ["TrainConfig", "TextTrainConfig"])
def test_a_trainer_config_refuses_an_unknown_device_when_made(make):
    import kdata.training.config as config

    with pytest.raises(KdataError, match="--device 'gpu': unknown device"):
        getattr(config, make)(device="gpu")
