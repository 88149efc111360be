"""A saved ``DatasetDict`` root (``dataset_dict.json`` + one directory per split) is refused in one
line naming its splits and the fix, as a pool and as an evaluation set: read whole, it merged train
and test (test rows in curated data, train rows in a "held-out" set). One split's directory reads."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdata.core.errors import KdataError
from kdata.pools.spec import open_pool

datasets = pytest.importorskip("datasets")

TRAIN = [f"train text {i}" for i in range(6)]
TEST = [f"test text {i}" for i in range(3)]


def _dict(root: Path) -> Path:
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": TRAIN, "label": ["a", "b"] * 3}),
                          "test": datasets.Dataset.from_dict({"text": TEST, "label": ["a", "b", "a"]})}
                         ).save_to_disk(str(root))
    return root


def test_a_dataset_dict_root_is_refused_naming_its_splits_and_the_fix(tmp_path):
    root = _dict(tmp_path / "ds2")
    with pytest.raises(KdataError) as exc:
        open_pool(str(root))
    msg = str(exc.value)
    assert msg == f"{root}: a DatasetDict with splits train, test: give one split's directory, e.g. {root / 'train'}"
    assert "\n" not in msg


def test_one_split_directory_is_read_alone(tmp_path):
    root = _dict(tmp_path / "ds2")
    train = open_pool(str(root / "train")).read_all()
    assert train.column("text").to_pylist() == TRAIN
    assert train.column("sample_id").to_pylist() == [f"data-00000-of-00001.arrow:{i}" for i in range(6)]
    assert open_pool(str(root / "test")).read_all().column("text").to_pylist() == TEST


def test_hostile_split_names_are_still_refused_first(tmp_path):
    """The split list is checked before the refusal names it (tests/pools/test_text_hf_disk_paths.py)."""
    import json

    root = _dict(tmp_path / "ds2")
    (root / "dataset_dict.json").write_text(json.dumps({"splits": ["train", "../x"]}))
    with pytest.raises(KdataError, match="not a plain directory name"):
        open_pool(str(root))


def test_an_evaluation_set_that_is_a_dataset_dict_is_refused(tmp_path):
    from kdata.training.text_data import eval_texts

    root = _dict(tmp_path / "ds2")
    with pytest.raises(KdataError, match=r"a DatasetDict with splits train, test: give one split's directory"):
        eval_texts(str(root))
    texts, labels = eval_texts(str(root / "test"))
    assert texts == TEST and labels == ["a", "b", "a"]


@pytest.mark.parametrize("command", ["select", "train"])
def test_cli_refuses_it_in_one_line_exit_2_before_any_work(tmp_path, capsys, command):
    pytest.importorskip("transformers")
    from kdata.cli import main
    from tests.helpers.text_models import text_assets

    m = text_assets()
    root = _dict(tmp_path / "ds2")
    out = tmp_path / "out"
    capsys.readouterr()
    if command == "select":
        argv = ["select", "--pool", str(root), "--teacher", f"hf:{m / 't'}", "--student", f"hf:{m / 's'}",
                "--budget", "0.5", "--out", str(out), "--quiet", "--device", "cpu"]
    else:  # a curated set to train on is not needed: the evaluation set is refused before
        shards = tmp_path / "cur"
        assert main(["select", "--pool", str(m / "pool.jsonl"), "--teacher", f"hf:{m / 't'}", "--student",
                     f"hf:{m / 's'}", "--budget", "0.5", "--out", str(shards), "--quiet", "--device", "cpu"]) == 0
        capsys.readouterr()
        argv = ["train", str(shards), "--student", f"hf:{m / 's'}", "--eval", str(root), "--epochs", "1",
                "--out", str(out), "--device", "cpu"]
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert err == f"kdata: error: {root}: a DatasetDict with splits train, test: give one split's directory, " \
                  f"e.g. {root / 'train'}"
    assert not out.exists()
