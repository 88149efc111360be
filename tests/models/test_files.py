"""Model files: .pt2 / TorchScript exports of CNNs trained here, sidecar validation, timm
checkpoints, safe loading, missing checkpoints and class-count mismatches (exit 2 before scoring)."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from kdata.cli import main
from kdata.core.errors import KdataError
from kdata.models.files import export_model, pool_class_names
from kdata.models.spec import load_model

from tests.helpers.real_inputs import CLASSES, INPUT, MEAN, STD, digits, exported_models, make_image_folder


def _x(n):
    x, _ = digits(n, offset=50)
    return (torch.from_numpy(x).float().div(255).unsqueeze(1) - 0.5) / 0.5


@pytest.mark.parametrize("kind", ["pt2", "pt"])
def test_exported_model_roundtrip(kind):
    m = exported_models()
    net = m["_nets"]["teacher"]
    model = load_model(m[f"teacher_{kind}"])
    assert model.input_size == INPUT and model.mean == MEAN and model.std == STD
    assert model.class_names == CLASSES and model.checksum.startswith("sha256:")
    for n in (1, 7):  # dynamic batch dimension
        x = _x(n)
        with torch.inference_mode():
            logits, feats = model.forward(x)
            want_f = net.features(x)
            want = net.head(want_f)
        assert logits.shape == (n, 10) and feats.shape == (n, 32)  # penultimate features survive the export
        torch.testing.assert_close(logits, want, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(feats, want_f, rtol=1e-4, atol=1e-5)
    sidecar = json.loads(Path(m[f"teacher_{kind}"]).with_suffix(".json").read_text())
    assert sidecar["outputs"] == ["logits", "features"] and sidecar["input_size"] == list(INPUT)
    assert load_model(m[f"teacher_{kind}"]).checksum == model.checksum


def test_logits_only_module_exports_without_features(tmp_path):
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(32 * 32, 3)).eval()
    path = export_model(net, tmp_path / "lin.pt2", input_size=INPUT, mean=MEAN, std=STD, class_names=["a", "b", "c"])
    assert json.loads((tmp_path / "lin.json").read_text())["outputs"] == ["logits"]
    logits, feats = load_model(str(path)).forward(_x(2))
    assert logits.shape == (2, 3) and feats is None
    with pytest.raises(KdataError, match="must be named"):
        export_model(net, tmp_path / "lin.pt", input_size=INPUT, mean=MEAN, std=STD, class_names=list("abc"))
    with pytest.raises(KdataError, match="class-count mismatch"):
        export_model(net, tmp_path / "x.pt2", input_size=INPUT, mean=MEAN, std=STD, class_names=list("ab"))


@pytest.mark.parametrize("kind", ["pt2"])  # TorchScript (.pt) writes a random serialization id into every archive
def test_the_same_weights_export_to_the_same_bytes(tmp_path, kind):
    """A .pt2 archive names its root folder after the file, never a random temporary name, so a student's
    sha256 shows that two runs gave the same weights; nothing temporary is left beside it."""
    import hashlib

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(32 * 32, 3)).eval()
    digests = []
    for d in ("a", "b"):
        path = export_model(net, tmp_path / d / f"student.{kind}", input_size=INPUT, mean=MEAN, std=STD,
                            class_names=["x", "y", "z"], kind=kind)
        digests.append(hashlib.sha256(path.read_bytes()).hexdigest())
        assert sorted(p.name for p in path.parent.iterdir()) == ["student.json", f"student.{kind}"]
    assert digests[0] == digests[1]


BAD_SIDECARS = [
    ({"mean": [0.5], "std": [0.5], "class_names": CLASSES}, "field 'input_size' is missing"),
    ({"input_size": [1, 32], "mean": [0.5], "std": [0.5]}, "field 'input_size' must be"),
    ({"input_size": [1, 32, 32], "mean": [0.5, 0.5, 0.5], "std": [0.5]}, "field 'mean' must be a list of 1"),
    ({"input_size": [1, 32, 32], "mean": [0.5], "std": [0.0]}, "field 'std' must be positive"),
    ({"input_size": [1, 32, 32], "mean": [0.5], "std": [0.5], "interpolation": "fancy"}, "field 'interpolation'"),
    ({"input_size": [1, 32, 32], "mean": [0.5], "std": [0.5], "class_names": ["a", "a"]},
     "field 'class_names' lists 'a'"),
    ({"input_size": [1, 32, 32], "mean": [0.5], "std": [0.5], "outputs": ["probs"]}, "field 'outputs'"),
    ({"input_size": [1, 32, 32], "mean": [0.5], "std": [0.5], "class_names": CLASSES[:9]}, "class-count mismatch"),
    ({"input_size": [3, 32, 32], "mean": [0.5] * 3, "std": [0.5] * 3},
     "forward pass on a batch of shape (2, 3, 32, 32)"),
    ({"input_size": [1, 32, 32], "mean": [0.5], "std": [0.5], "class_name": CLASSES},
     "field 'class_name' is not a sidecar field; did you mean 'class_names'?"),
    ({"input_size": [1, 32, 32], "mean": [123.675], "std": [58.395]}, "field 'mean' is on the 0–255 scale"),
]


@pytest.mark.parametrize("sidecar,message", BAD_SIDECARS)
def test_sidecar_validation_errors(tmp_path, sidecar, message):
    src = exported_models()["student_pt2"]
    path = tmp_path / "m.pt2"
    shutil.copy(src, path)
    (tmp_path / "m.json").write_text(json.dumps(sidecar))
    with pytest.raises(KdataError) as err:
        load_model(str(path))
    msg = str(err.value)
    assert message in msg and "\n" not in msg
    assert str(tmp_path / "m") in msg  # names the file
    assert err.value.exit_code == 2


def test_sidecar_missing_or_not_json(tmp_path):
    path = tmp_path / "m.pt"
    shutil.copy(exported_models()["student_pt"], path)
    with pytest.raises(KdataError, match="sidecar m.json not found"):
        load_model(str(path))
    (tmp_path / "m.json").write_text("{not json")
    with pytest.raises(KdataError, match=r"m.json: not valid JSON \(line 1"):
        load_model(str(path))
    (tmp_path / "m.json").write_text(json.dumps({"input_size": [1, 32, 32], "mean": [0.5], "std": [0.5]}))
    with pool_class_names(list("abcdefghij")):  # no class_names: the pool's, when the count matches
        assert load_model(str(path)).class_names == list("abcdefghij")
    with pool_class_names(["a", "b", "c"]), pytest.raises(KdataError, match="outputs 10 classes but the pool has 3"):
        load_model(str(path))


def test_not_an_archive_is_one_line(tmp_path):
    path = tmp_path / "state.pt"
    torch.save({"w": torch.zeros(2)}, path)
    (tmp_path / "state.json").write_text(json.dumps({"input_size": [1, 32, 32], "mean": [0.5], "std": [0.5]}))
    with pytest.raises(KdataError, match="state.pt: cannot load as a TorchScript archive"):
        load_model(str(path))


def _cli(capsys, *args):
    code = main(list(args))
    return code, capsys.readouterr().err


def test_cli_missing_checkpoint_and_class_count_mismatch_exit_2(tmp_path, capsys):
    m = exported_models()
    pool = make_image_folder(tmp_path / "pool", n=12)
    base = ["select", "--pool", str(pool), "--method", "kd3", "--budget", "5", "--device", "cpu"]
    code, err = _cli(capsys, *base, "--teacher", str(tmp_path / "nope.pt2"), "--student", m["student_pt"],
                     "--out", str(tmp_path / "o1"))
    assert code == 2 and "nope.pt2: model file not found" in err and err.count("\n") == 1
    code, err = _cli(capsys, *base, "--teacher", m["teacher_pt2"], "--student", m["student4_pt2"],
                     "--out", str(tmp_path / "o2"))
    assert code == 2 and "class-count mismatch" in err
    code, err = _cli(capsys, *base, "--teacher", m["teacher_pt2"], "--student", f"timm:test_resnet:{tmp_path}/no.pth",
                     "--out", str(tmp_path / "o3"))
    assert code == 2 and "checkpoint" in err and "not found" in err
    assert not any((tmp_path / o).exists() for o in ("o1", "o2", "o3"))  # nothing half-written


def test_select_with_pt2_teacher_and_torchscript_student(tmp_path, capsys):
    m = exported_models()
    pool = make_image_folder(tmp_path / "pool", n=40)
    code = main(["select", "--pool", str(pool), "--teacher", m["teacher_pt2"], "--student", m["student_pt"],
                 "--method", "kd3", "--budget", "20", "--device", "cpu", "--out", str(tmp_path / "o"), "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["counts"]["kept"] == 20 and report["counts"]["n_in"] == 40
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert manifest["models"]["teacher"]["spec"] == m["teacher_pt2"]
    assert manifest["models"]["student"]["checksum"] == load_model(m["student_pt"]).checksum


# ------------------------------------------------------------------------------------------------
# timm

def _timm_checkpoint(tmp_path, *, classes=CLASSES, sidecar=True):
    import timm

    torch.manual_seed(0)
    net = timm.create_model("test_resnet", pretrained=False, num_classes=len(classes), in_chans=1).eval()
    ckpt = tmp_path / "resnet.pth"
    torch.save({"state_dict": net.state_dict()}, ckpt)
    if sidecar:
        (tmp_path / "resnet.json").write_text(json.dumps({"input_size": [1, 32, 32], "mean": [0.5], "std": [0.5],
                                                          "class_names": classes}))
    return net, ckpt


def test_timm_checkpoint_loads_with_features(tmp_path):
    net, ckpt = _timm_checkpoint(tmp_path)
    model = load_model(f"timm:test_resnet:{ckpt}")
    assert model.class_names == CLASSES and model.input_size == INPUT
    x = _x(3)
    with torch.inference_mode():
        logits, feats = model.forward(x)
        want = net(x)
    torch.testing.assert_close(logits, want)
    assert feats.ndim == 2 and feats.shape[0] == 3


def test_timm_class_count_mismatch_and_bad_checkpoints(tmp_path):
    _, ckpt = _timm_checkpoint(tmp_path)
    (tmp_path / "resnet.json").write_text(json.dumps({"input_size": [1, 32, 32], "mean": [0.5], "std": [0.5],
                                                      "class_names": CLASSES[:5]}))
    with pytest.raises(KdataError, match="class-count mismatch: the checkpoint's classifier has 10 outputs"):
        load_model(f"timm:test_resnet:{ckpt}")
    with pytest.raises(KdataError, match="does not fit test_vit"):
        load_model(f"timm:test_vit:{ckpt}")
    with pytest.raises(KdataError, match="unknown timm architecture"):
        load_model(f"timm:no_such_net:{ckpt}")
    (tmp_path / "junk.pth").write_bytes(b"\x00" * 100)
    with pytest.raises(KdataError, match="cannot read checkpoint"):
        load_model(f"timm:test_resnet:{tmp_path / 'junk.pth'}")


class Payload:  # an arbitrary pickled object: weights_only=True must refuse it
    def __reduce__(self):
        return (print, ("this must never run",))


def test_checkpoints_never_unpickle_arbitrary_objects(tmp_path, capsys):
    ckpt = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "extra": Payload()}, ckpt)
    with pytest.raises(KdataError, match=r"evil.pth: .*refused: loading it would call __builtin__.print"):
        load_model(f"timm:test_resnet:{ckpt}")
    assert "this must never run" not in capsys.readouterr().out


def test_class_order_mismatch_is_refused(tmp_path):
    from kdata.scoring.score import check_models

    m = exported_models()
    rev = export_model(m["_nets"]["student"], tmp_path / "rev.pt2", input_size=INPUT, mean=MEAN, std=STD,
                       class_names=CLASSES[::-1])
    with pytest.raises(KdataError, match="class order differs"):
        check_models(load_model(m["teacher_pt2"]), load_model(str(rev)))


def test_sidecar_keys_other_than_misspelt_fields_are_allowed():
    from kdata.models.sidecar import validate_sidecar

    cfg = validate_sidecar({"input_size": [1, 32, 32], "mean": [0.5], "std": [0.5], "crop_pct": 0.875,
                            "notes": "exported from timm's pretrained_cfg"}, where="m.json")
    assert cfg["input_size"] == (1, 32, 32) and "notes" not in cfg
