"""Image semantic dedup that removes most of the pool (features that do not separate the images, or a
threshold set too low) says so, as text dedup does: one warning on stderr and ``method_info.dedup.warning``
— for ``kdata select`` and ``kdata dedup`` alike (built-in pool and models, real faiss)."""

from __future__ import annotations

import json

from kdata.cli import main


def test_semantic_dedup_removing_most_images_warns(tmp_path, capsys):
    out = tmp_path / "sel"
    assert main(["select", "--method", "kd3", "--budget", "0.5", "--dedup", "semantic", "--dedup-threshold", "0.05",
                 "--out", str(out), "--quiet"]) == 0
    err = capsys.readouterr().err
    info = json.loads((out / "manifest.json").read_text())["method_info"]["dedup"]
    assert "features may not separate the images" in info["warning"] and err.count("kdata: warning: near/semantic") == 1
    # the default threshold on the same pool removes far less: no warning
    assert main(["select", "--method", "kd3", "--budget", "0.5", "--dedup", "semantic", "--out", str(tmp_path / "ok"),
                 "--quiet"]) == 0
    assert "near/semantic dedup removed" not in capsys.readouterr().err
    assert main(["dedup", str(tmp_path / "ok"), "--level", "semantic", "--dedup-threshold", "0.05",
                 "--out", str(tmp_path / "dd")]) == 0
    assert "features may not separate the images" in capsys.readouterr().err
