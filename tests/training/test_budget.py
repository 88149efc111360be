"""The trainer takes the kept set's size into account: α by kept fraction, and equal-steps training.

Real runs: selections written by the real pipeline from the built-in pool, the built-in student
trained on them for a few steps, logs read back from ``train_log.json`` and the CLI's ``--json``.
"""

from __future__ import annotations

import json
import shutil

import pytest

from kdata.cli import main
from kdata.models.spec import load_model
from kdata.training.budget import (ALPHA_LARGE, ALPHA_SMALL, F_LARGE, F_SMALL, alpha_for_fraction, kept_fraction,
                                   plan_steps)
from kdata.training.train import TrainConfig, run_train, train


def test_alpha_rule_is_monotone_and_meets_its_endpoints():
    fractions = [i / 200 for i in range(0, 201)]
    alphas = [alpha_for_fraction(f) for f in fractions]
    assert all(a >= b for a, b in zip(alphas, alphas[1:]))  # non-increasing in the kept fraction
    assert alpha_for_fraction(0.01) == alpha_for_fraction(F_SMALL) == ALPHA_SMALL
    assert alpha_for_fraction(F_LARGE) == alpha_for_fraction(1.0) == ALPHA_LARGE
    assert ALPHA_SMALL > alpha_for_fraction(0.3) > ALPHA_LARGE  # strictly between in the middle
    assert alpha_for_fraction(None) == ALPHA_LARGE  # unknown fraction: the large-set value


def test_plan_steps_derives_the_epochs():
    assert plan_steps(145, batch_size=64, epochs=12, steps=0) == (12, 36)  # 3 batches × 12 epochs
    assert plan_steps(145, batch_size=64, epochs=12, steps=5) == (2, 5)
    assert plan_steps(145, batch_size=64, epochs=12, steps=2) == (1, 2)


@pytest.fixture(scope="module")
def selections(tmp_path_factory, builtin_models):
    """Random 10% and 50% of the built-in pool, written by the real pipeline."""
    from kdata.pipeline.config import RunOptions, SelectConfig
    from kdata.pipeline.run import run_select

    root = tmp_path_factory.mktemp("budget")
    outs = {}
    for b in ("0.1", "0.5"):
        outs[b] = root / f"sel-{b}"
        run_select(SelectConfig(method="random", budget=b), out=str(outs[b]), opts=RunOptions(device="cpu"))
    return outs


def test_alpha_is_chosen_by_the_kept_fraction_and_recorded(selections, tmp_path):
    logs = {}
    for b, path in selections.items():
        out = tmp_path / f"student-{b}"
        run_train(shards=path, student="builtin:digits-student", eval=None, out=str(out),
                  config=TrainConfig(steps=1, device="cpu"))
        logs[b] = json.loads((out / "train_log.json").read_text())
    small, large = logs["0.1"]["alpha"], logs["0.5"]["alpha"]
    assert small["kept_fraction"] == pytest.approx(145 / 1457, abs=1e-6)
    assert large["kept_fraction"] == pytest.approx(728 / 1457, abs=2e-3)
    assert small["source"] == large["source"] == "rule"
    assert small["value"] == ALPHA_SMALL and large["value"] == pytest.approx(alpha_for_fraction(large["kept_fraction"]))
    assert small["value"] > large["value"]  # the smaller subset leans more on the teacher
    assert "kept fraction 0.100" in small["reason"] and "Ben-Baruch" in small["reason"]
    assert logs["0.1"]["config"]["alpha"] == small["value"]  # the α the loss used
    for b, path in selections.items():  # recorded for a trainer of one's own, and said on the card
        entry = json.loads((path / "manifest.json").read_text())["kd_weight"]
        assert entry["alpha"] == logs[b]["alpha"]["value"] and entry["rule"] in logs[b]["alpha"]["reason"]
        assert f"`kdata train` uses α = {entry['alpha']} on this set" in (path / "README.md").read_text()


def test_given_alpha_wins_and_no_manifest_falls_back(selections, tmp_path):
    student = load_model("builtin:digits-student")
    log = train(student, selections["0.1"], config=TrainConfig(steps=1, alpha=0.5, device="cpu"))
    assert log["alpha"] == {"value": 0.5, "source": "given", "kept_fraction": pytest.approx(0.1, abs=1e-3),
                            "reason": "set by --alpha"}
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in (selections["0.1"] / "data").glob("*.parquet"):
        shutil.copy(f, bare / f.name)
    log = train(load_model("builtin:digits-student"), bare, config=TrainConfig(steps=1, device="cpu"))
    assert log["alpha"]["value"] == ALPHA_LARGE and log["alpha"]["kept_fraction"] is None
    assert kept_fraction(bare)[0] is None


def test_steps_stops_after_exactly_n_optimiser_steps(selections):
    """145 rows in batches of 64 = 3 steps an epoch: 5 steps are one full epoch and 2 of the next."""
    student = load_model("builtin:digits-student")
    before = {k: v.clone() for k, v in student.module.state_dict().items()}
    log = train(student, selections["0.1"], config=TrainConfig(steps=5, device="cpu"))
    assert log["steps"] == 5 and log["epochs"] == 2
    assert [h["steps"] for h in log["history"]] == [3, 2]
    assert [h["rows"] for h in log["history"]] == [145, 128]
    assert log["protocol"] == {"kind": "equal-steps", "steps_requested": 5, "epochs_requested": None,
                               "steps_per_epoch": 3, "steps_planned": 5}
    assert any(not (before[k] == v).all() for k, v in student.module.state_dict().items())
    # the epochs protocol counts its steps too
    log = train(load_model("builtin:digits-student"), selections["0.1"], config=TrainConfig(epochs=2, device="cpu"))
    assert log["steps"] == 6 and log["protocol"]["kind"] == "epochs"


def test_cli_steps_and_alpha_in_the_json_and_summary(selections, tmp_path, capsys):
    rc = main(["train", str(selections["0.5"]), "--steps", "4", "--eval", "none", "--json", "--device", "cpu",
               "--out", str(tmp_path / "s")])
    rep = json.loads(capsys.readouterr().out)
    assert rc == 0 and rep["steps"] == 4 and rep["epochs"] == 1 and rep["history"][0]["rows"] == 256
    assert rep["alpha"]["source"] == "rule" and rep["alpha"]["value"] == pytest.approx(ALPHA_LARGE, abs=1e-3)
    rc = main(["train", str(selections["0.1"]), "--steps", "1", "--eval", "none", "--device", "cpu",
               "--out", str(tmp_path / "t")])
    out = capsys.readouterr().out
    assert rc == 0 and "(1 optimiser steps)" in out and f"α = {ALPHA_SMALL}: kept fraction 0.100" in out


def test_negative_steps_is_one_line_exit_2(selections, capsys):
    rc = main(["train", str(selections["0.1"]), "--steps", "-1", "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and "--steps -1" in err and len(err.strip().splitlines()) == 1
