"""``kdata inspect``'s example tables name the teacher's and student's predicted classes (``T``, ``S``) as the
run names them, not by logit index; ``--json`` keeps the indices and adds ``class_names``."""

from __future__ import annotations

import json

import numpy as np
import torch
from PIL import Image

from kdata.cli import main
from kdata.models.files import export_model

NAMES = ["cat", "dog"]


def test_examples_name_the_predicted_classes(tmp_path, capsys):
    rng = np.random.default_rng(0)
    for c in NAMES:
        (tmp_path / "photos" / c).mkdir(parents=True)
        for i in range(12):
            Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(tmp_path / "photos" / c / f"{i}.png")
    torch.manual_seed(0)
    for stem in ("teacher", "student"):
        net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 2))
        export_model(net, tmp_path / f"{stem}.pt2", input_size=(3, 16, 16), mean=(0.5,) * 3, std=(0.25,) * 3,
                     class_names=NAMES)
    out = tmp_path / "curated"
    assert main(["select", "--pool", str(tmp_path / "photos"), "--teacher", str(tmp_path / "teacher.pt2"),
                 "--student", str(tmp_path / "student.pt2"), "--budget", "0.5", "--out", str(out), "--device", "cpu",
                 "--quiet"]) == 0
    capsys.readouterr()
    assert main(["inspect", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["class_names"] == NAMES and isinstance(summary["examples"][0]["teacher_pred"], int)
    assert main(["inspect", str(out), "--examples", "3"]) == 0
    table = capsys.readouterr().out.split("kept examples (best ranked)")[1].split("rejected examples")[0]
    rows = [[c.strip() for c in line.split("│")[1:-1]] for line in table.splitlines() if line.startswith("│")]
    assert len(rows) == 3 and all(r[2] in NAMES and r[3] in NAMES for r in rows), rows  # sample_id, label, T, S
