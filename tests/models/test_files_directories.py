"""A directory where a model file, a checkpoint or a sidecar should be: "model file not found" or
"sidecar m.json not found" sent the user looking for a file that is there. Each now says it is a
directory, in one line naming it, exit 2; the weights are never opened."""

from __future__ import annotations

import re
import shutil

import pytest

from kdata.cli import main
from kdata.core.errors import KdataError
from kdata.models.spec import load_model
from tests.helpers.real_inputs import exported_models


def test_a_model_path_that_is_a_directory(tmp_path):
    d = tmp_path / "m.pt2"
    d.mkdir()
    with pytest.raises(KdataError, match=rf"^{re.escape(str(d))}: is a directory, not a model file$"):
        load_model(str(d))


@pytest.mark.parametrize("kind", ["student_pt", "teacher_pt2"])
def test_a_sidecar_that_is_a_directory(tmp_path, kind):
    src = exported_models()[kind]
    path = tmp_path / f"m{src[src.rindex('.'):]}"
    shutil.copy(src, path)
    (tmp_path / "m.json").mkdir()
    sidecar = re.escape(str(tmp_path / "m.json"))
    with pytest.raises(KdataError, match=rf"^{sidecar}: is a directory, not a sidecar JSON file "
                                         rf"\(the sidecar of {path.name}\)$"):
        load_model(str(path))


def test_a_timm_checkpoint_or_its_sidecar_that_is_a_directory(tmp_path):
    pytest.importorskip("timm")
    ckpt = tmp_path / "w.pth"
    ckpt.mkdir()
    with pytest.raises(KdataError, match=r"checkpoint .*w\.pth: is a directory, not a checkpoint file"):
        load_model(f"timm:test_resnet:{ckpt}")
    ckpt.rmdir()
    ckpt.write_bytes(b"")
    (tmp_path / "w.json").mkdir()  # an optional sidecar: a directory is not "absent"
    with pytest.raises(KdataError, match=r"w\.json: is a directory, not a sidecar JSON file"):
        load_model(f"timm:test_resnet:{ckpt}")


def test_cli_student_directory_is_one_line_exit_2(tmp_path, capsys):
    d = tmp_path / "dir.pt2"
    d.mkdir()
    code = main(["select", "--pool", "builtin:digits-web", "--teacher", "builtin:digits-teacher", "--student", str(d),
                 "--budget", "0.5", "--device", "cpu", "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err == f"kdata: error: {d}: is a directory, not a model file\n"
