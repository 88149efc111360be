"""hf:DIR JSON files and sharded indexes: deep nesting, wrong types and weight files outside the
directory are one line naming the file (and the entry), before any weights are read or hashed."""

from __future__ import annotations

import json
import shutil

import pytest

pytest.importorskip("transformers")

from kdata.core.errors import KdataError  # noqa: E402
from kdata.models.hf import load_hf  # noqa: E402
from kdata.models.hf_safety import weight_files, weights_checksum  # noqa: E402
from tests.helpers.text_models import tiny_lm  # noqa: E402

INDEX = "model.safetensors.index.json"
DEEP = "[" * 100000 + "]" * 100000


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    """A real tiny GPT-2 saved in several safetensors shards with their index, plus its tokenizer."""
    from transformers import GPT2LMHeadModel

    root = tmp_path_factory.mktemp("hfidx")
    single = tiny_lm(root / "single")
    d = root / "sharded"
    GPT2LMHeadModel.from_pretrained(single).save_pretrained(d, max_shard_size="40KB")
    for f in single.iterdir():
        if f.name != "model.safetensors" and not (d / f.name).exists():
            shutil.copy(f, d / f.name)
    assert (d / INDEX).is_file() and not (d / "model.safetensors").exists()
    assert len(set(json.loads((d / INDEX).read_text())["weight_map"].values())) > 1
    return d


def _copy(sharded, tmp_path, name="m"):
    return shutil.copytree(sharded, tmp_path / name)


def _set_entry(d, value, *, which=0):
    idx = json.loads((d / INDEX).read_text())
    key = sorted(idx["weight_map"])[which]
    idx["weight_map"][key] = value
    (d / INDEX).write_text(json.dumps(idx))


def test_a_normal_sharded_model_loads(sharded):
    files, fmt = weight_files(sharded)
    assert fmt == "safetensors" and len(files) > 1 and all(f.parent == sharded for f in files)
    m = load_hf(sharded)
    assert m.kind == "causal_lm" and m.checksum.startswith("sha256:")


@pytest.mark.parametrize("name", ["config.json", "tokenizer_config.json", INDEX])
def test_deeply_nested_json_is_one_line_naming_the_file(sharded, tmp_path, name):
    d = _copy(sharded, tmp_path)
    (d / name).write_text(DEEP)
    with pytest.raises(KdataError) as exc:
        load_hf(d)
    msg = str(exc.value)
    assert msg == f"{d / name}: not valid JSON (nested too deeply)" and "\n" not in msg


@pytest.mark.parametrize("body, why", [({"weight_map": ["a"]}, "not list"),
                                       ({"weight_map": {"w": 3}}, "must be a file name, not int"),
                                       (["weight_map"], "expected a JSON object, not list")])
def test_index_of_the_wrong_type_is_one_line(sharded, tmp_path, body, why):
    d = _copy(sharded, tmp_path)
    (d / INDEX).write_text(json.dumps(body))
    with pytest.raises(KdataError, match=f"^{d / INDEX}: .*{why}$") as exc:
        load_hf(d)
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("entry", ["../x/model.safetensors", "/etc/passwd", "sub/model.safetensors", ".."])
def test_index_naming_files_outside_the_directory_is_refused_before_reading(sharded, tmp_path, entry):
    d = _copy(sharded, tmp_path)
    other = _copy(sharded, tmp_path, "x")  # a real, loadable shard outside the model directory
    first = sorted(json.loads((other / INDEX).read_text())["weight_map"].values())[0]
    (d / "sub").mkdir()
    shutil.copy(other / first, d / "sub" / "model.safetensors")
    shutil.copy(other / first, other / "model.safetensors")
    _set_entry(d, entry)
    expected = (f"{d / INDEX}: weight file {entry!r} is not a plain file name in the model directory "
                "(one path component: no '/', no '..', not absolute)")
    # refused in weight_files, which load_hf calls before the tokenizer, the weights or the checksum
    for step in (weight_files, weights_checksum, load_hf):
        with pytest.raises(KdataError) as exc:
            step(d)
        assert str(exc.value) == expected


def test_symlinked_shard_leaving_the_directory_is_refused(sharded, tmp_path):
    d = _copy(sharded, tmp_path)
    outside = tmp_path / "outside.safetensors"
    shard = sorted(json.loads((d / INDEX).read_text())["weight_map"].values())[0]
    (d / shard).rename(outside)
    (d / shard).symlink_to(outside)
    with pytest.raises(KdataError) as exc:
        weights_checksum(d)
    assert str(exc.value) == f"{d / INDEX}: weight file {shard!r}: symlink to {outside}, outside the model directory"
    # a symlink that stays inside the directory is read
    (d / shard).unlink()
    outside.rename(d / "real.bin")
    (d / shard).symlink_to(d / "real.bin")
    assert weight_files(d)[0]


def test_a_hugging_face_cache_snapshot_with_shards_linked_to_its_blobs_loads(sharded, tmp_path):
    """``models--org--name/snapshots/<rev>/`` links every file to ``../../blobs/``: that folder, and only
    the repository's own, is accepted (a shard linked to another repository's blobs is not)."""
    repo = tmp_path / "hub" / "models--org--tiny"
    snap, blobs = repo / "snapshots" / "abc123", repo / "blobs"
    snap.mkdir(parents=True)
    blobs.mkdir()
    for i, f in enumerate(sorted(sharded.iterdir())):
        shutil.copy(f, blobs / f"blob{i}")
        (snap / f.name).symlink_to(f"../../blobs/blob{i}")
    shards = sorted(set(json.loads((snap / INDEX).read_text())["weight_map"].values()))
    files, fmt = weight_files(snap)
    assert fmt == "safetensors" and sorted(p.name for p in files) == shards
    assert load_hf(snap).kind == "causal_lm"
    other = tmp_path / "hub" / "models--org--other" / "blobs"
    other.mkdir(parents=True)
    shard = shards[0]
    target = (snap / shard).resolve()
    shutil.copy(target, other / "stolen")
    (snap / shard).unlink()
    (snap / shard).symlink_to(other / "stolen")
    with pytest.raises(KdataError, match="outside the model directory"):
        weight_files(snap)


def test_cli_index_escape_is_exit_2_one_line(sharded, tmp_path, capsys):
    from kdata.cli import main
    from tests.helpers.text_models import write_jsonl

    d = _copy(sharded, tmp_path)
    _set_entry(d, "/etc/passwd")
    pool = write_jsonl(tmp_path / "pool.jsonl", n=6)
    out = tmp_path / "out"
    capsys.readouterr()
    code = main(["select", "--pool", str(pool), "--teacher", f"hf:{d}", "--student", f"hf:{sharded}",
                 "--method", "random", "--budget", "2", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and not out.exists(), err
    assert err == (f"kdata: error: {d / INDEX}: weight file '/etc/passwd' is not a plain file name in the model "
                   "directory (one path component: no '/', no '..', not absolute)")
