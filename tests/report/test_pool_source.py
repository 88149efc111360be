"""A run given a relative ``--pool``: ``kdata card`` and ``inspect`` run from another directory still read
the rejected rows back from it (the manifest records the pool as seen from OUT, ``pool.from_out``), and a
dataset moved together with its pool keeps finding it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from kdata.cli import main
from tests.helpers.real_inputs import make_image_folder


def test_card_from_another_directory_reads_the_relative_pool_back(tmp_path, monkeypatch, capsys):
    work = tmp_path / "work"
    make_image_folder(work / "pools" / "p", n=40)
    monkeypatch.chdir(work)
    assert main(["select", "--pool", "pools/p", "--method", "kd3", "--budget", "10", "--out", "out/run", "--quiet"]) == 0
    m = json.loads((work / "out" / "run" / "manifest.json").read_text())
    assert m["pool"]["from_out"] == "../../pools/p" and m["config"]["pool"] == "pools/p"
    for where, run in ((tmp_path, work / "out" / "run"), (tmp_path, None)):
        if run is None:  # the dataset and its pool moved together
            shutil.move(str(work), str(tmp_path / "moved"))
            run = tmp_path / "moved" / "out" / "run"
        monkeypatch.chdir(where)
        assert main(["card", str(run)]) == 0
        card = (run / "README.md").read_text()
        assert "not pictured" not in card and "not reachable" not in card, card[-600:]
    capsys.readouterr()


def test_the_cards_train_command_finds_relative_model_files_from_the_dataset_directory(tmp_path, monkeypatch,
                                                                                        capsys):
    """The card said `kdata train . --student student.pt2`, a path relative to where select ran: exit 2."""
    import re

    from tests.helpers.real_inputs import exported_models

    work = tmp_path / "work"
    make_image_folder(work / "pools" / "p", n=40)
    (work / "models").mkdir()
    for role in ("teacher", "student"):
        src = Path(exported_models()[f"{role}_pt2"])
        shutil.copy(src, work / "models" / f"{role}.pt2")
        shutil.copy(src.with_suffix(".json"), work / "models" / f"{role}.json")  # the sidecar
    monkeypatch.chdir(work)
    assert main(["select", "--pool", "pools/p", "--teacher", "models/teacher.pt2", "--student", "models/student.pt2",
                 "--method", "kd3", "--budget", "10", "--out", "out/run", "--quiet"]) == 0
    run = work / "out" / "run"
    m = json.loads((run / "manifest.json").read_text())
    assert m["models"]["student"]["from_out"] == "../../models/student.pt2"
    assert m["models"]["student"]["spec"] == "models/student.pt2"  # what the run was given, unchanged
    command = re.search(r"^kdata train \. --student (\S+)$", (run / "README.md").read_text(), re.M)
    assert command and command.group(1) == "../../models/student.pt2"
    monkeypatch.chdir(run)
    capsys.readouterr()
    assert main(["train", ".", "--student", command.group(1), "--epochs", "1", "--out", str(tmp_path / "s")]) == 0
