"""Hugging Face conventions: the card's ``dataset_info.features`` is what the real ``datasets`` library
builds from the shard schema, ``load_dataset(OUT)`` decodes ``image`` to a PIL image, and the card's own
"How to load" code runs as written."""

import os
import re
import shutil
import subprocess
import sys

import pyarrow as pa
import pytest
from PIL import Image

from kdata.dataset.schema import SHARD_SCHEMA
from kdata.report.card import read_front_matter
from kdata.report.hf import hf_features

datasets = pytest.importorskip("datasets")  # a dev dependency


def test_features_are_what_datasets_builds_from_the_shard_schema():
    schema = (SHARD_SCHEMA.append(pa.field("score_kd3", pa.float32()))
              .append(pa.field("meta", pa.struct([("a", pa.int8()), ("b", pa.string())])))
              .append(pa.field("spans", pa.list_(pa.struct([("s", pa.int32())]))))
              .append(pa.field("grid", pa.list_(pa.list_(pa.float16())))))
    features = datasets.Features._from_yaml_list(hf_features(schema, image_columns=("image",)))
    expected = datasets.Features.from_arrow_schema(schema)
    expected["image"] = datasets.Image()
    assert features == expected
    assert hf_features(schema)[1] == {"name": "image", "dtype": "binary"}  # declared an image only when asked


def test_a_type_without_a_plain_feature_declares_none():
    assert hf_features(pa.schema([("sample_id", pa.string()), ("t", pa.timestamp("s"))])) is None


def test_load_dataset_of_a_run_gives_pil_images(demo_run, tmp_path):
    fm = read_front_matter((demo_run / "README.md").read_text())
    assert {"name": "image", "dtype": "image"} in fm["dataset_info"]["features"]
    ds = datasets.load_dataset(str(demo_run), cache_dir=str(tmp_path / "hf"))
    row = ds["train"][0]
    assert isinstance(row["image"], Image.Image) and row["image"].size[0] > 0
    assert isinstance(ds["train"].features["image"], datasets.Image)
    assert len(row["teacher_topk_prob"]) == len(row["teacher_topk_idx"]) > 0
    import pandas as pd  # the shards themselves are unchanged: plain readers still see the encoded bytes

    assert isinstance(pd.read_parquet(demo_run / "data")["image"].iloc[0], bytes)


def test_label_idx_is_a_class_label_over_the_class_names(demo_run, tmp_path):
    """label_idx loaded as a bare int32: the names had to be rebuilt from manifest.json."""
    import json

    names = json.loads((demo_run / "manifest.json").read_text())["class_names"]
    ds = datasets.load_dataset(str(demo_run), cache_dir=str(tmp_path / "hf"))["train"]
    assert ds.features["label_idx"] == datasets.ClassLabel(names=names)
    assert [ds.features["label_idx"].int2str(i) for i in ds["label_idx"][:20]] == ds["label"][:20]
    yaml = hf_features(SHARD_SCHEMA, class_names=["a", "b"])
    assert datasets.Features._from_yaml_list(yaml)["label_idx"] == datasets.ClassLabel(names=["a", "b"])
    assert hf_features(SHARD_SCHEMA, class_names=None) == hf_features(SHARD_SCHEMA)  # no names: a plain integer
    # names with markup or control characters would stand raw in the YAML front matter: a plain integer
    assert hf_features(SHARD_SCHEMA, class_names=["a", "<b>"]) == hf_features(SHARD_SCHEMA)
    assert hf_features(SHARD_SCHEMA, class_names=["a", "b\x1b"]) == hf_features(SHARD_SCHEMA)


def test_the_cards_how_to_load_code_runs_as_written(demo_run, tmp_path):
    out = tmp_path / demo_run.name
    shutil.copytree(demo_run, out)
    text = (out / "README.md").read_text()
    block = re.search(r"## How to load\n.*?```python\n(.*?)```", text, re.DOTALL).group(1)
    assert 'load_dataset(os.getcwd(), split="train")' in block and 'image = train[0]["image"]' in block
    check = "\nfrom PIL import Image\nassert isinstance(image, Image.Image)\nassert len(df) == len(train) == table.num_rows\n"
    env = {**os.environ, "HF_DATASETS_CACHE": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-c", block + check], cwd=out, env=env, capture_output=True, text=True,
                       check=False, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
