"""The built-in models load from the weights shipped in the package: no training, same bytes everywhere."""

from __future__ import annotations

import json
import shutil

import pytest
from safetensors import safe_open

from kdata.core.atomic import sha256_file
from kdata.core.errors import KdataError
from kdata.models import builtin
from kdata.models.builtin import RETRAIN_ENV, SPECS, DigitsNet, accuracy, package_weights_dir, shipped_metadata
from kdata.models.spec import load_model
from kdata.pools import builtin as pool_builtin

NAMES = sorted(SPECS)


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("KDATA_CACHE", str(cache))
    monkeypatch.delenv(RETRAIN_ENV, raising=False)
    return cache


def test_shipped_weights_load_without_training(empty_cache):
    models = {n: load_model(f"builtin:{n}") for n in NAMES}
    # nothing was trained or written: the cache holds no model file
    assert not (empty_cache / "models").exists() or not any((empty_cache / "models").iterdir())
    for n, m in models.items():
        shipped = package_weights_dir() / f"{n}.safetensors"
        assert m.checksum == "sha256:" + sha256_file(shipped)
        assert not m.module.training and isinstance(m.module, DigitsNet)


def test_loading_leaves_the_callers_torch_rng_alone(empty_cache):
    """DigitsNet was built with a random init (then overwritten) from the caller's global RNG."""
    import torch

    torch.manual_seed(0)
    want = torch.rand(3)
    torch.manual_seed(0)
    models = [load_model(f"builtin:{n}") for n in NAMES]
    assert torch.equal(torch.rand(3), want)
    again = load_model(f"builtin:{NAMES[0]}")  # and the weights are the shipped ones, whatever the RNG
    for a, b in zip(models[0].module.state_dict().values(), again.module.state_dict().values()):
        assert torch.equal(a, b)


def test_shipped_files_match_their_recorded_sha256_and_accuracy():
    meta = shipped_metadata()
    assert sorted(meta["models"]) == NAMES and meta["threads"] == 1
    assert meta["produced_by"] == "python -m kdata.models.builtin --retrain --write-package-weights"
    test_x, test_y = pool_builtin.split_arrays("test")
    for n in NAMES:
        entry = meta["models"][n]
        path = package_weights_dir() / entry["file"]
        assert sha256_file(path) == entry["sha256"] and path.stat().st_size == entry["bytes"]
        # tensors only, exactly the architecture's state dict
        with safe_open(str(path), framework="pt") as f:
            keys = set(f.keys())
        assert keys == set(DigitsNet(SPECS[n]["widths"]).state_dict())
        # the weights are data: the same predictions as when they were made
        m = load_model(f"builtin:{n}")
        assert accuracy(m, test_x, test_y) == pytest.approx(entry["test_accuracy"], abs=1e-4)
    t, s = (meta["models"][n]["test_accuracy"] for n in ("digits-teacher", "digits-student"))
    assert t > 0.95 and 0.75 < s < t - 0.1  # a teacher worth distilling, a student with room to learn


def _copy_weights(tmp_path, monkeypatch):
    wdir = tmp_path / "weights"
    shutil.copytree(package_weights_dir(), wdir)
    monkeypatch.setattr(builtin, "package_weights_dir", lambda: wdir)
    return wdir


def test_altered_shipped_weights_are_refused_in_one_line(tmp_path, monkeypatch, empty_cache):
    wdir = _copy_weights(tmp_path, monkeypatch)
    path = wdir / "digits-student.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # one weight's last byte
    path.write_bytes(bytes(data))
    with pytest.raises(KdataError) as err:
        load_model("builtin:digits-student")
    msg = str(err.value)
    assert str(path) in msg and "sha256" in msg and "\n" not in msg
    path.unlink()
    with pytest.raises(KdataError, match="missing"):
        load_model("builtin:digits-student")
    (wdir / "weights.json").write_text("{not json")
    with pytest.raises(KdataError, match="weights.json"):
        load_model("builtin:digits-teacher")


def test_retraining_on_request_writes_safetensors_to_the_cache(empty_cache, monkeypatch):
    """``KDATA_BUILTIN_RETRAIN=1`` trains on first use (the student: a few seconds) and reuses the file."""
    monkeypatch.setenv(RETRAIN_ENV, "1")
    m = load_model("builtin:digits-student")
    cached = empty_cache / "models" / "digits-student-retrained-v1.safetensors"
    assert cached.is_file() and m.checksum == "sha256:" + sha256_file(cached)
    test_x, test_y = pool_builtin.split_arrays("test")
    recorded = shipped_metadata()["models"]["digits-student"]
    # the same recipe: the shipped accuracy (byte-identical on the CPU family that made the files)
    assert accuracy(m, test_x, test_y) == pytest.approx(recorded["test_accuracy"], abs=0.03)
    mtime = cached.stat().st_mtime_ns
    assert load_model("builtin:digits-student").checksum == m.checksum and cached.stat().st_mtime_ns == mtime


def test_regeneration_script_describes_the_shipped_files(tmp_path):
    """``--write-package-weights`` writes what weights.json records (checked here without retraining)."""
    meta = json.loads((package_weights_dir() / "weights.json").read_text())
    for n in NAMES:
        entry = meta["models"][n]
        assert entry["train"] == {k: SPECS[n][k] for k in ("split", "epochs", "seed")}
        assert entry["arch"]["widths"] == list(SPECS[n]["widths"])
        assert entry["params"] == sum(p.numel() for p in DigitsNet(SPECS[n]["widths"]).parameters())
