"""Hostile model files (issue 15, items 1, 5 and 9): no code runs from a model file, and every
bad model file or sidecar is one line and exit 2.

Real files throughout: ``.pt2`` archives written by ``torch.export.save`` and TorchScript archives
by ``torch.jit.save`` (tiny CNNs trained in the test session), rewritten member by member with
``zipfile``; payloads are real pickles whose ``__reduce__`` calls ``os.system("touch MARKER")``.
What is promised:

* every way torch 2.14.1 would run code from a ``.pt2`` (pickled members retried with
  ``weights_only=False``, pickled weights and opaque constants, ``guards_code`` that torch
  ``exec``-s, symbolic sizes it ``sympify``-s, node targets resolved by ``getattr``, compiled
  AOTInductor libraries) is refused with one line naming the file, and the marker never appears;
* the same for TorchScript archives and timm / built-in checkpoints;
* each layer holds on its own: with the archive inspection bypassed, the guard around torch's
  loader still stops every payload;
* a garbage, truncated or damaged ``.pt2`` is one line on stderr (no torch traceback before it);
* sidecar numbers are finite, ``input_size`` is bounded before any tensor is allocated.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import shutil
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import pytest
import torch

from kdata.cli import main
from kdata.core.errors import KdataError
from kdata.models.safe_load import untrusted_load
from kdata.models.sidecar import MAX_SIDE
from kdata.models.spec import load_model
from tests.helpers.cli import kdata
from tests.helpers.real_inputs import CLASSES, exported_models, make_image_folder


class Payload:
    """Unpickling this runs ``touch MARKER``: what a hostile model file carries."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def torch_save_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def rewrite(src: str | Path, dst: Path, edit) -> Path:
    """Copy a torch archive member by member; ``edit(relative name, bytes)`` returns new bytes, or
    None to drop the member; ``edit.extra`` (optional) lists (relative name, bytes) to add."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        root = zin.namelist()[0].split("/", 1)[0]
        for info in zin.infolist():
            data = edit(info.filename.split("/", 1)[1], zin.read(info))
            if data is not None:
                zout.writestr(info.filename, data)
        for name, data in getattr(edit, "extra", ()):
            zout.writestr(f"{root}/{name}", data)
    sidecar = Path(src).with_suffix(".json")
    shutil.copy(sidecar, dst.with_suffix(".json"))
    return dst


def _json_edit(member: str, change):
    def edit(name, data):
        if name == member:
            doc = json.loads(data)
            change(doc)
            return json.dumps(doc).encode()
        return data
    return edit


def pt2_attack(kind: str, src: str, dst: Path, marker: Path) -> Path:
    """A copy of a valid ``.pt2`` carrying one way of running ``touch marker``."""
    touch = f"__import__('os').system('touch {marker}')"
    if kind == "sample_inputs_pickle":  # the case: a raw pickle, retried with weights_only=False
        edit = lambda n, d: pickle.dumps(Payload(marker), protocol=2) if n.startswith("data/sample_inputs/") else d
    elif kind == "sample_inputs_torch_save":
        edit = lambda n, d: torch_save_bytes((Payload(marker),)) if n.startswith("data/sample_inputs/") else d
    elif kind == "pickled_weight":
        def change(doc):
            next(e for e in doc["config"].values() if e["path_name"] == "weight_0")["use_pickle"] = True
        cfg = _json_edit("data/weights/model_weights_config.json", change)

        def edit(n, d):
            return torch_save_bytes(Payload(marker)) if n == "data/weights/weight_0" else cfg(n, d)
    elif kind == "opaque_constant":
        def change(doc):
            doc["config"]["c"] = {"path_name": "opaque_obj_0", "is_param": False, "use_pickle": True,
                                  "tensor_meta": None}
        edit = _json_edit("data/constants/model_constants_config.json", change)
        edit.extra = [("data/constants/opaque_obj_0", pickle.dumps(Payload(marker)))]
    elif kind == "guards_code":
        edit = _json_edit("models/model.json", lambda doc: doc.update(guards_code=[f"{touch} == 0"]))
    elif kind == "expr_str":
        def edit(n, d):
            if n != "models/model.json":
                return d
            text = d.decode()
            sym = "Symbol('s"
            i = text.index(sym)
            return (text[:i] + f"({touch} and 0) + " + text[i:]).encode()
    elif kind == "node_target":
        def change(doc):
            doc["graph_module"]["graph"]["nodes"][0]["target"] = "torch.serialization.os.system"
        edit = _json_edit("models/model.json", change)
    elif kind == "aotinductor":
        edit = lambda n, d: d
        edit.extra = [("data/aotinductor/model/model.so", b"\x7fELF" + b"\0" * 60)]
    else:
        raise AssertionError(kind)
    return rewrite(src, dst, edit)


PT2_ATTACKS = ["sample_inputs_pickle", "sample_inputs_torch_save", "pickled_weight", "opaque_constant",
               "guards_code", "expr_str", "node_target", "aotinductor"]


def assert_refused(err: KdataError, path: Path) -> None:
    msg = str(err)
    assert "\n" not in msg and str(path) in msg and err.exit_code == 2, msg


@pytest.mark.parametrize("kind", PT2_ATTACKS)
def test_hostile_pt2_is_refused_and_runs_nothing(tmp_path, kind):
    marker = tmp_path / "pwned"
    evil = pt2_attack(kind, exported_models()["student_pt2"], tmp_path / "evil.pt2", marker)
    with pytest.raises(KdataError) as err:
        load_model(str(evil))
    assert_refused(err.value, evil)
    assert not marker.exists()


RUNS_IN_BARE_TORCH = ["sample_inputs_pickle", "sample_inputs_torch_save", "pickled_weight", "opaque_constant",
                      "guards_code", "expr_str"]


@pytest.mark.parametrize("kind", RUNS_IN_BARE_TORCH)
def test_attack_is_real_against_bare_torch(tmp_path, kind):
    """Control: torch 2.14.1 on its own runs each of these payloads, so the tests above would see
    a regression (a marker) if kdata's guard were lifted."""
    marker = tmp_path / "pwned"
    evil = pt2_attack(kind, exported_models()["student_pt2"], tmp_path / "evil.pt2", marker)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with contextlib.suppress(Exception):  # torch often fails after the payload ran
            torch.export.load(str(evil)).module()(torch.zeros(2, 1, 32, 32))
    assert marker.exists(), f"torch {torch.__version__} no longer runs the {kind} payload: revisit this test"


@pytest.mark.parametrize("kind", RUNS_IN_BARE_TORCH)
def test_guard_alone_stops_payloads_inside_torch_export_load(tmp_path, kind):
    """Second layer on its own: torch.export.load on the hostile archive, no inspection first."""
    marker = tmp_path / "pwned"
    evil = pt2_attack(kind, exported_models()["student_pt2"], tmp_path / "evil.pt2", marker)
    # torch's own error or kdata's refusal; never the payload
    with pytest.raises(Exception), untrusted_load(str(evil)):  # noqa: B017
        program = torch.export.load(str(evil)).module()
        program(torch.zeros(2, 1, 32, 32))
    assert not marker.exists()


def test_guard_refuses_plain_unpickling_and_restores_torch_load(tmp_path):
    marker = tmp_path / "pwned"
    original = torch.load
    blob = tmp_path / "blob.pt"
    blob.write_bytes(torch_save_bytes(Payload(marker)))
    with pytest.raises(KdataError, match=r"blob: refused: loading it tried to unpickle posix.system"), \
            untrusted_load("blob"):
        pickle.loads(pickle.dumps(Payload(marker)))
    # weights_only=False is overridden inside the guard
    with pytest.raises(Exception), untrusted_load(str(blob)):  # noqa: B017
        torch.load(blob, weights_only=False)
    assert not marker.exists()
    assert torch.load is original  # outside a guarded call torch is untouched
    assert torch.load(io.BytesIO(torch_save_bytes({"w": torch.ones(2)})), weights_only=False)["w"].sum() == 2


def test_cli_select_with_hostile_teacher_exits_2_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    m = exported_models()
    evil = pt2_attack("sample_inputs_pickle", m["teacher_pt2"], tmp_path / "evil.pt2", marker)
    pool = make_image_folder(tmp_path / "pool", n=8)
    proc = subprocess.run([sys.executable, "-m", "kdata.cli", "select", "--pool", str(pool), "--teacher", str(evil),
                           "--student", m["student_pt"], "--method", "kd3", "--budget", "4", "--device", "cpu",
                           "--out", str(tmp_path / "out")], check=False, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "evil.pt2" in proc.stderr and "refused" in proc.stderr, proc.stderr
    assert not marker.exists() and not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------------
# TorchScript, timm and built-in checkpoints

def test_hostile_torchscript_archives_are_refused(tmp_path):
    marker = tmp_path / "pwned"
    src = exported_models()["student_pt"]
    planted = rewrite(src, tmp_path / "planted.pt", lambda n, d: pickle.dumps(Payload(marker), protocol=2)
                      if n == "data.pkl" else d)
    plain = tmp_path / "plain.pt"  # a torch.save pickle named .pt
    torch.save(Payload(marker), plain)
    shutil.copy(Path(src).with_suffix(".json"), tmp_path / "plain.json")

    class Writes(torch.nn.Module):
        def __init__(self, target: str):
            super().__init__()
            self.target = target

        def forward(self, x):
            torch.save(x, self.target)
            return x.flatten(1)[:, :10]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.script is deprecated; still what users have
        scripted = torch.jit.script(Writes(str(marker)))
        writer = tmp_path / "writer.pt"
        torch.jit.save(scripted, str(writer))
    shutil.copy(Path(src).with_suffix(".json"), tmp_path / "writer.json")
    # the call split by a comment and a line break (TorchScript's lexer skips both), or reached by an alias
    split = rewrite(writer, tmp_path / "split.pt", lambda n, d: d.replace(b"torch.save(", b"(torch.#c\n save)(")
                    if n.startswith("code/") else d)
    alias = rewrite(writer, tmp_path / "alias.pt", lambda n, d: d.replace(b"torch.save(", b"torch.ops.aten.save(")
                    if n.startswith("code/") else d)
    printer = rewrite(writer, tmp_path / "printer.pt", lambda n, d: d.replace(b"torch.save(", b"print(")
                      if n.startswith("code/") else d)  # raw bytes on the user's terminal
    for path, why in ((planted, "would call posix.system"), (plain, "no code/ folder"),
                      (writer, "calls 'torch.save'"), (split, "calls 'torch.save'"), (alias, "calls 'aten.save'"),
                      (printer, "calls 'print'")):
        with pytest.raises(KdataError, match=why) as err:
            load_model(str(path))
        assert_refused(err.value, path)
    # guard alone: TorchScript's C++ unpickler refuses the Python global, no payload runs
    with pytest.raises(Exception), untrusted_load(str(planted)):  # noqa: B017
        torch.jit.load(str(planted))
    assert not marker.exists()



class _Loops(torch.nn.Module):
    def forward(self, x):
        i = 0
        while i >= 0:  # never ends; TorchScript's interpreter cannot be interrupted inside it
            i = i + 1
        return x.flatten(1)[:, :10]


def test_a_torchscript_model_that_loops_forever_is_one_line_not_a_hang(tmp_path):
    m = exported_models()
    loops = tmp_path / "loops.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.script is deprecated; still what users have
        torch.jit.save(torch.jit.script(_Loops()), str(loops))
    shutil.copy(Path(m["student_pt"]).with_suffix(".json"), loops.with_suffix(".json"))
    pool = make_image_folder(tmp_path / "pool", n=8)
    proc = subprocess.run([sys.executable, "-m", "kdata.cli", "select", "--pool", str(pool), "--teacher",
                           m["teacher_pt2"], "--student", str(loops), "--method", "kd3", "--budget", "4",
                           "--device", "cpu", "--out", str(tmp_path / "out")], check=False, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "KDATA_PROBE_SECONDS": "3"})
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "loops.pt: a forward pass on zeros ran over 3 s" in proc.stderr, proc.stderr
    assert not (tmp_path / "out").exists()

@pytest.mark.parametrize("legacy", [False, True])
def test_hostile_timm_checkpoint_is_refused(tmp_path, legacy):
    import timm

    marker = tmp_path / "pwned"
    net = timm.create_model("test_resnet", pretrained=False, num_classes=10, in_chans=1)
    ckpt = tmp_path / "evil.pth"
    torch.save({"state_dict": net.state_dict(), "args": Payload(marker)}, ckpt,
               _use_new_zipfile_serialization=not legacy)
    (tmp_path / "evil.json").write_text(json.dumps({"input_size": [1, 32, 32], "mean": [0.5], "std": [0.5],
                                                    "class_names": CLASSES}))
    with pytest.raises(KdataError, match=r"refused: loading it would call posix.system") as err:
        load_model(f"timm:test_resnet:{ckpt}")
    assert_refused(err.value, ckpt)
    assert not marker.exists()
    good = tmp_path / "good.pth"  # the same checkpoint without the payload loads, in either format
    torch.save({"state_dict": net.state_dict()}, good, _use_new_zipfile_serialization=not legacy)
    shutil.copy(tmp_path / "evil.json", tmp_path / "good.json")
    assert load_model(f"timm:test_resnet:{good}").num_classes == 10


def test_hostile_builtin_cache_file_is_refused(tmp_path, monkeypatch):
    """The built-in weights ship as safetensors; a retrained copy in the cache is read as safetensors too."""
    from kdata.models.builtin import MODEL_VERSION, RETRAIN_ENV

    marker = tmp_path / "pwned"
    monkeypatch.setenv("KDATA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv(RETRAIN_ENV, "1")
    cached = tmp_path / "cache" / "models" / f"digits-student-retrained-{MODEL_VERSION}.safetensors"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(torch_save_bytes({"body.0.weight": Payload(marker)}))
    with pytest.raises(KdataError, match="cannot load the weights") as err:
        load_model("builtin:digits-student")
    assert_refused(err.value, cached)
    assert not marker.exists()


# ------------------------------------------------------------------------------------------------
# Garbage archives: one line, exit 2, nothing from torch on stderr before it

def _garbage(kind: str, tmp_path: Path) -> Path:
    src = exported_models()["student_pt2"]
    path = tmp_path / f"{kind}.pt2"
    if kind == "random_bytes":
        path.write_bytes(os.urandom(4096))
    elif kind == "truncated":
        data = Path(src).read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "missing_weight":
        rewrite(src, path, lambda n, d: None if n == "data/weights/weight_0" else d)
    shutil.copy(Path(src).with_suffix(".json"), path.with_suffix(".json"))
    return path


@pytest.mark.parametrize("kind", ["random_bytes", "truncated", "missing_weight"])
def test_garbage_pt2_is_one_line_on_stderr(tmp_path, kind):
    bad = _garbage(kind, tmp_path)
    pool = make_image_folder(tmp_path / "pool", n=8)
    code, _, err = kdata("select", "--pool", pool, "--teacher", bad, "--student", exported_models()["student_pt"],
                         "--method", "kd3", "--budget", "4", "--device", "cpu", "--out", tmp_path / "out")
    assert code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("kdata: error:") and bad.name in lines[0], err


# ------------------------------------------------------------------------------------------------
# Sidecar values

BAD_VALUES = [
    ('"std": [NaN]', "std", "finite"),
    ('"std": [Infinity]', "std", "finite"),
    ('"mean": [1e400]', "mean", "finite"),
    ('"mean": [-Infinity]', "mean", "finite"),
    ('"std": [-0.5]', "std", "positive"),
    ('"input_size": [1, 100000, 100000]', "input_size", f"at most {MAX_SIDE}"),
    ('"input_size": [4, 32, 32]', "input_size", "1 or 3"),
    ('"input_size": [1, 32, 32.0]', "input_size", "positive integers"),
    ('"class_names": ["0", "1", "2", "3", "4", "5", "6", "7", "8", ""]', "class_names", "non-empty strings"),
    ('"class_names": ["0", "1", "2", "3", "4", "5", "6", "7", "8", 9]', "class_names", "non-empty strings"),
    ('"class_names": ["0", "1", "2", "3", "4", "5", "6", "7", "8", "8"]', "class_names", "more than once"),
]


@pytest.mark.parametrize("override,field,why", BAD_VALUES)
def test_bad_sidecar_values_are_one_line_naming_file_and_field(tmp_path, capsys, override, field, why):
    src = exported_models()["student_pt2"]
    model = tmp_path / "m.pt2"
    shutil.copy(src, model)
    fields = {"input_size": "[1, 32, 32]", "mean": "[0.5]", "std": "[0.5]", "class_names": json.dumps(CLASSES)}
    key = override.split(":", 1)[0].strip('"')
    fields[key] = override.split(":", 1)[1].strip()
    (tmp_path / "m.json").write_text("{" + ", ".join(f'"{k}": {v}' for k, v in fields.items()) + "}")
    with pytest.raises(KdataError) as err:
        load_model(str(model))
    msg = str(err.value)
    assert str(tmp_path / "m.json") in msg and f"field '{field}'" in msg and why in msg and "\n" not in msg, msg
    pool = make_image_folder(tmp_path / "pool", n=4)
    code = main(["select", "--pool", str(pool), "--teacher", str(model), "--student", exported_models()["student_pt"],
                 "--method", "kd3", "--budget", "2", "--device", "cpu", "--out", str(tmp_path / "out")])
    stderr = capsys.readouterr().err
    assert code == 2 and stderr.count("\n") == 1 and f"field '{field}'" in stderr
    assert not (tmp_path / "out").exists()
