"""timm checkpoints are checked tensor by tensor against the named architecture before it is built.

Real timm models (``test_resnet``, classifier ``fc``: 96 features) and checkpoints written here by
``torch.save``. A classifier weight of shape ``[N, 0]`` holds no bytes, so without a sidecar the file
could name any class count; timm would then allocate and initialise an ``N x 96`` head before
``load_state_dict`` refused it. What is promised:

* the checkpoint's names and shapes are compared with the architecture built on the ``meta``
  device (no memory) first: a wrong-width / zero-width classifier, a mismatched, unexpected or
  missing tensor is one line naming the checkpoint and the first bad tensor, with no allocation;
* a class count read from a file is capped (``MAX_TIMM_CLASSES``);
* real checkpoints, with and without a sidecar, load as before;
* in ``kdata select`` it is exit 2 with one ``kdata: error:`` line, before anything is written.

Memory is ``VmHWM`` growth in a fresh process (as in ``tests/pools/test_parquet_rows_hostile_sizes.py``), run
under an address-space limit so that a regression fails the test instead of exhausting the machine.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kdata.cli import main
from kdata.core.errors import KdataError
from kdata.models.spec import load_model

from tests.helpers.real_inputs import make_image_folder

ROOT = Path(__file__).resolve().parents[2]


def _state(num_classes=4, in_chans=3):
    import timm

    torch.manual_seed(0)
    return timm.create_model("test_resnet", pretrained=False, num_classes=num_classes, in_chans=in_chans).state_dict()


def _save(path: Path, state: dict) -> Path:
    torch.save({"state_dict": state}, path)
    return path


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def test_empty_classifier_with_a_huge_class_count_is_refused_with_bounded_memory(tmp_path):
    sd = _state()
    huge = _save(tmp_path / "huge.pth", {**sd, "fc.weight": torch.empty(50_000_000, 0)})  # 19.2 GB head if built
    mid = _save(tmp_path / "mid.pth", {**sd, "fc.weight": torch.empty(2_000_000, 0)})  # 768 MB head if built
    assert huge.stat().st_size < 2_000_000 and mid.stat().st_size < 2_000_000
    code = f"""
import resource, time
import timm
from kdata.core.errors import KdataError
from kdata.models.spec import load_model
def status(key):
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(key + ":"))
# a regression must fail here, not exhaust the machine: at most 3 GiB more address space
limit = status("VmSize") * 1024 + (3 << 30)
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
before = status("VmHWM")
for path in ({str(mid)!r}, {str(huge)!r}):
    t0 = time.monotonic()
    try:
        load_model("timm:test_resnet:" + path)
        print("loaded")
    except KdataError as exc:
        print("refused", str(exc).replace(chr(10), "|"))
    print(round(time.monotonic() - t0, 2))
print((status("VmHWM") - before) // 1024)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    mid_line, _, huge_line, _, peak_mib = out.stdout.strip().split("\n")
    for line, path, n in ((mid_line, mid, 2_000_000), (huge_line, huge, 50_000_000)):
        assert line.startswith(f"refused timm:test_resnet:{path}: checkpoint {path} does not fit test_resnet"), line
        assert f"tensor 'fc.weight' has shape ({n}, 0), test_resnet expects ({n}, 96)" in line
    assert int(peak_mib) < 200, f"peak grew by {peak_mib} MiB"


def test_wrong_width_classifier_is_refused(tmp_path):
    sd = _state()
    ckpt = _save(tmp_path / "w.pth", {**sd, "fc.weight": torch.zeros(4, 95)})
    with pytest.raises(KdataError) as err:
        load_model(f"timm:test_resnet:{ckpt}")
    msg = _one_line(err)
    assert msg.startswith(f"timm:test_resnet:{ckpt}: checkpoint {ckpt} does not fit test_resnet")
    assert "tensor 'fc.weight' has shape (4, 95), test_resnet expects (4, 96)" in msg


def test_mismatched_unexpected_and_missing_tensors_are_named(tmp_path):
    sd = _state()
    name = next(k for k, v in sd.items() if k != "fc.weight" and v.ndim == 4)  # a conv weight
    want = tuple(sd[name].shape)
    lie = (want[0] * 1000, *want[1:-1], 0)  # zero bytes on disk, a large conv if built
    ckpt = _save(tmp_path / "shape.pth", {**sd, name: torch.empty(lie)})
    with pytest.raises(KdataError) as err:
        load_model(f"timm:test_resnet:{ckpt}")
    assert f"checkpoint {ckpt} does not fit test_resnet (tensor '{name}' has shape {lie}, " \
           f"test_resnet expects {want})" in _one_line(err)

    ckpt = _save(tmp_path / "extra.pth", {**sd, "extra.weight": torch.zeros(3)})
    with pytest.raises(KdataError) as err:
        load_model(f"timm:test_resnet:{ckpt}")
    assert f"checkpoint {ckpt} does not fit test_resnet (unexpected tensor 'extra.weight')" in _one_line(err)

    gone = [k for k in sd if k != "fc.weight"][:2]
    ckpt = _save(tmp_path / "missing.pth", {k: v for k, v in sd.items() if k not in gone})
    with pytest.raises(KdataError) as err:
        load_model(f"timm:test_resnet:{ckpt}")
    assert f"checkpoint {ckpt} does not fit test_resnet (missing tensor '{gone[0]}' and 1 more)" in _one_line(err)


def test_real_checkpoints_load_with_and_without_sidecar(tmp_path):
    import timm

    sd = _state(num_classes=7)
    ckpt = _save(tmp_path / "plain.pth", sd)  # no sidecar: timm's defaults, 7 classes from fc.weight
    model = load_model(f"timm:test_resnet:{ckpt}")
    assert model.num_classes == 7 and model.input_size[0] == 3
    torch.save(_state(num_classes=3, in_chans=1), tmp_path / "gray.pth")  # a bare state dict, with a sidecar
    (tmp_path / "gray.json").write_text(json.dumps({"input_size": [1, 32, 32], "mean": [0.5], "std": [0.5],
                                                    "class_names": ["a", "b", "c"]}))
    model = load_model(f"timm:test_resnet:{tmp_path / 'gray.pth'}")
    assert model.class_names == ["a", "b", "c"] and model.input_size == (1, 32, 32)
    net = timm.create_model("test_resnet", pretrained=False, num_classes=3, in_chans=1).eval()
    net.load_state_dict(_state(num_classes=3, in_chans=1))
    x = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        logits, _ = model.forward(x)
        torch.testing.assert_close(logits, net(x))


def test_cli_empty_classifier_exit_2_one_line(tmp_path, capsys):
    sd = _state(num_classes=10, in_chans=1)
    good = _save(tmp_path / "good.pth", sd)
    (tmp_path / "good.json").write_text(json.dumps({"input_size": [1, 32, 32], "mean": [0.5], "std": [0.5],
                                                    "class_names": [str(i) for i in range(10)]}))
    bad = _save(tmp_path / "bad.pth", {**sd, "fc.weight": torch.empty(1_000_000, 0)})
    pool = make_image_folder(tmp_path / "pool", n=12)
    code = main(["select", "--pool", str(pool), "--teacher", f"timm:test_resnet:{bad}", "--student",
                 f"timm:test_resnet:{good}", "--method", "kd3", "--budget", "5", "--device", "cpu",
                 "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith(f"kdata: error: timm:test_resnet:{bad}: checkpoint {bad}")
    assert "tensor 'fc.weight' has shape (1000000, 0), test_resnet expects (1000000, 96)" in err
    assert not (tmp_path / "o").exists()
