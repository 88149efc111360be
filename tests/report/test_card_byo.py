"""The data card of a ``--scores`` run without ``--pool`` names the predictions file where a pool would
stand, and says the scores were read, not computed (it said "samples from `None`" and "Score every
pool sample")."""

from __future__ import annotations

import numpy as np

from kdata.cli import main
from tests.helpers.methods import write_predictions


def test_a_predictions_only_card_names_the_file_and_reads_its_scores(tmp_path, capsys):
    rng = np.random.default_rng(0)
    t = rng.normal(size=(40, 4)) * 3
    preds = write_predictions(tmp_path / "p.parquet", t, t + rng.normal(size=t.shape))
    out = tmp_path / "out"
    assert main(["select", "--scores", str(preds), "--method", "kd3", "--budget", "10", "--out", str(out),
                 "--quiet"]) == 0
    capsys.readouterr()
    card = (out / "README.md").read_text()
    assert "`None`" not in card and "pool: null" not in card
    assert f"candidate samples from `predictions {preds}`" in card
    assert f"1. Read the teacher's and student's predictions for every sample from `{preds}`" in card
    assert "Score every pool sample" not in card
