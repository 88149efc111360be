"""A ``kdata select`` rerun into a finished OUT is "already complete" only while the models its manifest
records still have the recorded checksums: a model directory (or a ``--scores`` file) replaced in place
keeps the spec, so the config hash, but is refused in one line instead of returning the old result."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from kdata.cli import main
from tests.helpers.methods import write_predictions

pytest.importorskip("transformers")

from tests.helpers.text_models import text_assets, tiny_lm  # noqa: E402


def test_text_student_replaced_in_place_is_not_already_complete(tmp_path, capsys):
    from kdata.models.hf import load_text_model
    from kdata.pipeline.run import current_checksum

    d = text_assets()
    stu = tmp_path / "s"
    shutil.copytree(d / "s", stu)
    out = tmp_path / "sel"
    args = ["select", "--pool", str(d / "pool.jsonl"), "--teacher", f"hf:{d / 't'}", "--student", f"hf:{stu}",
            "--method", "random", "--budget", "0.5", "--out", str(out), "--device", "cpu", "--json"]
    assert main(args) == 0
    capsys.readouterr()
    assert main(args) == 0 and json.loads(capsys.readouterr().out)["status"] == "already complete"
    # the checksum the rerun computes without loading the weights is the one loading gives
    assert current_checksum(f"hf:{stu}") == load_text_model(f"hf:{stu}").checksum
    tiny_lm(stu, seed=5, n_embd=16)  # other weights under the same path
    assert current_checksum(f"hf:{stu}") == load_text_model(f"hf:{stu}").checksum
    before = json.loads((out / "manifest.json").read_text())
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{out}: --out holds this run, made with student hf:{stu} at sha256:" in err
    assert "its weights are now sha256:" in err and "delete it to select again" in err
    assert json.loads((out / "manifest.json").read_text()) == before  # untouched


def test_scores_file_replaced_in_place_is_not_already_complete(tmp_path, capsys):
    rng = np.random.default_rng(0)
    t = rng.normal(size=(40, 4)) * 3
    path = write_predictions(tmp_path / "p.parquet", t, t + rng.normal(size=(40, 4)))
    args = ["select", "--scores", path, "--method", "kd3", "--budget", "10", "--out", str(tmp_path / "o"), "--json"]
    assert main(args) == 0
    capsys.readouterr()
    assert main(args) == 0 and json.loads(capsys.readouterr().out)["status"] == "already complete"
    write_predictions(tmp_path / "p.parquet", t, t + rng.normal(size=(40, 4)))  # other predictions, same path
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--out holds this run, made with teacher byo:" in err
    assert "the predictions file's checksum is now" in err
