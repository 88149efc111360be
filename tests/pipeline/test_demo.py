"""``kdata demo`` from an empty cache: a complete, verifiable dataset, accuracies, progress for every step."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pytest

from kdata.dataset.writer import verify
from kdata.models.builtin import RETRAIN_ENV, shipped_metadata

EPOCHS = 2  # the demo's default is 12; two keep the test short and still train both students


@pytest.fixture(scope="module")
def cli_demo(tmp_path_factory):
    """``kdata demo --out OUT`` in a fresh process with an empty KDATA_CACHE, stdout and stderr piped."""
    root = tmp_path_factory.mktemp("demo-cli")
    cache, out = root / "cache", root / "out"
    env = {k: v for k, v in os.environ.items() if k != RETRAIN_ENV}
    env["KDATA_CACHE"] = str(cache)
    proc = subprocess.run([sys.executable, "-m", "kdata.cli", "demo", "--out", str(out), "--epochs", str(EPOCHS)],
                          capture_output=True, text=True, env=env, timeout=600)
    return proc, out, cache


def test_demo_cli_on_an_empty_cache_writes_a_verified_dataset_and_prints_accuracies(cli_demo):
    proc, out, cache = cli_demo
    assert proc.returncode == 0, proc.stderr
    assert verify(out) == []  # shards, decisions and counts all match the manifest
    manifest = json.loads((out / "manifest.json").read_text())
    c = manifest["counts"]
    assert c["n_in"] == c["kept"] + c["rejected"] + c["quarantined"] and c["kept"] > 0
    assert (out / "README.md").is_file()
    # the models are the shipped weights: their sha256 is the manifest's checksum, nothing trained them
    shipped = shipped_metadata()["models"]
    for role, name in (("teacher", "digits-teacher"), ("student", "digits-student")):
        assert manifest["models"][role]["checksum"] == "sha256:" + shipped[name]["sha256"]
    assert not (cache / "models").exists()
    text = proc.stdout
    assert "kept" in text and "rejected" in text and "quarantined" in text and str(out) in text
    assert f"after {EPOCHS} epochs of distillation on {c['kept']} rows" in text
    line = next(ln for ln in text.splitlines() if "curated" in ln and "random (same size)" in ln)
    acc = dict(zip(("curated", "random", "teacher", "before"),
                   (float(w) for w in line.split() if w[:1].isdigit())))
    assert acc["teacher"] == pytest.approx(shipped["digits-teacher"]["test_accuracy"], abs=1e-3)
    assert acc["before"] == pytest.approx(shipped["digits-student"]["test_accuracy"], abs=1e-3)
    assert 0.0 < acc["curated"] <= 1.0 and 0.0 < acc["random"] <= 1.0
    assert "demo done in" in text
    assert proc.stderr == ""  # stderr is not a terminal: no progress bars
    # the hint it prints reproduces the curated student's figure
    hint = next(ln for ln in text.splitlines() if "train it yourself" in ln).split(": ", 1)[1].split()
    assert hint[:2] == ["kdata", "train"] and "--keep-last" in hint
    env = dict(os.environ, KDATA_CACHE=str(cache))
    again = subprocess.run([sys.executable, "-m", "kdata.cli", *hint[1:], "--json", "--out", str(out) + "-hint"],
                           capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["accuracy"] == pytest.approx(acc["curated"], abs=1e-3)


class Recorder:
    """Records every progress call and forwards it to the CLI's real progress bars."""

    def __init__(self):
        from rich.console import Console

        from kdata.cli.common import ProgressBars

        self.buf = io.StringIO()
        self.bars = ProgressBars(console=Console(file=self.buf, force_terminal=True, width=120))
        self.calls: list[tuple] = []

    def __call__(self, stage, done=None, total=None):
        self.calls.append((stage, done, total))
        self.bars(stage, done, total)


def test_demo_reports_progress_for_every_step_and_trains_the_students_as_one_after_the_other(
        cli_demo, tmp_path, monkeypatch):
    from kdata.models.spec import load_model
    from kdata.pipeline.config import SelectConfig
    from kdata.pipeline.demo import one_thread, random_like, run_demo
    from kdata.training.evaluate import EvalSet
    from kdata.training.train import TrainConfig, train

    monkeypatch.setenv("KDATA_CACHE", str(cli_demo[2]))  # the scores of the CLI run are reused
    rec = Recorder()
    result = run_demo(out=str(tmp_path / "out"), epochs=1, progress=rec)
    rec.bars.close()
    stages = list(dict.fromkeys(c[0] for c in rec.calls))
    assert stages[0] == "preparing"
    assert {"scoring", "selecting", "writing", "evaluating", "random set", "curated student",
            "random student"} <= set(stages)
    kept = result["counts"]["kept"]
    for label in ("curated student", "random student"):
        assert (label, kept, kept) in rec.calls  # each bar ends full (1 epoch of `kept` rows)
        assert f"{kept}/{kept}" in rec.buf.getvalue() and label in rec.buf.getvalue()
    # trained side by side, the students end exactly as when trained one after the other
    acc = result["training"]
    cfg = SelectConfig()
    tc = TrainConfig(device="cpu", seed=cfg.seed, eval_every_epoch=False, epochs=1)
    with one_thread():
        ev = EvalSet("builtin:digits-test", model=load_model(cfg.student))
        rnd = random_like(cfg, n=kept, out=tmp_path / "random")
        assert train(load_model(cfg.student), tmp_path / "out", config=tc, eval_set=ev)["accuracy"] == \
            acc["student_curated"]
        assert train(load_model(cfg.student), rnd, config=tc, eval_set=ev)["accuracy"] == acc["student_random"]


@pytest.mark.parametrize("argv, message", [
    (["--budget", "150%"], "150%"),
    (["--epochs", "0"], "--epochs 0"),
])
def test_bad_demo_options_are_one_line_before_any_work(tmp_path, capsys, argv, message):
    from kdata.cli import main

    out = tmp_path / "out"
    assert main(["demo", "--out", str(out), "--quiet", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not out.exists()


def test_demo_help_describes_every_option(capsys):
    from kdata.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["demo", "--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for opt in ("--out", "--budget", "--seed", "--epochs", "--no-train", "--json", "--quiet"):
        assert opt in text
    assert "(default: 12)" in text and "random set of the same size" in text
