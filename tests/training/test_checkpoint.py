"""A killed ``kdata train`` resumes: a rerun goes on from the last finished epoch and ends with the very
student an uninterrupted run saves (same ``student_sha256``, same accuracies and losses).

Real runs: a ``kdata train`` subprocess SIGKILLed at a chosen write (``KDATA_CRASH_AFTER``,
``kdata.core.crashpoints``), or an in-process run stopped by an exception raised from its progress
callback when an epoch starts (as Ctrl-C would); the built-in student on a selection of the built-in pool.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from kdata.cli import main
from kdata.core.lock import lock_path

ARGS = ["--epochs", "4", "--device", "cpu", "--json", "--quiet"]


class Stop(Exception):
    """Raised from the progress callback: the run stops there, as if interrupted."""


def stop_at(stage: str):
    def progress(name, done=None, total=None):
        if name == stage:
            raise Stop(name)
    return progress


def _cli(capsys, *args):
    capsys.readouterr()
    code = main([str(a) for a in args])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


@pytest.fixture(scope="module")
def sel(tmp_path_factory, builtin_models):
    """A random 200 rows of the built-in pool (4 batches of 64 an epoch), by the real pipeline."""
    from kdata.pipeline.config import RunOptions, SelectConfig
    from kdata.pipeline.run import run_select

    out = tmp_path_factory.mktemp("resume") / "sel"
    run_select(SelectConfig(method="random", budget="200"), out=str(out), opts=RunOptions(device="cpu"))
    return out


@pytest.fixture(scope="module")
def reference(sel, tmp_path_factory):
    """The log of one uninterrupted ``kdata train`` (eval every epoch, best weights kept)."""
    out = tmp_path_factory.mktemp("ref") / "student"
    assert main(["train", str(sel), *ARGS, "--out", str(out)]) == 0
    return json.loads((out / "train_log.json").read_text())


def _same_run(log: dict, ref: dict) -> None:
    assert log["student_sha256"] == ref["student_sha256"]
    assert log["accuracy"] == ref["accuracy"] and log["accuracy_before"] == ref["accuracy_before"]
    assert log["kept"] == ref["kept"] and log["steps"] == ref["steps"]
    assert [(h["loss"], h.get("accuracy")) for h in log["history"]] == \
           [(h["loss"], h.get("accuracy")) for h in ref["history"]]


@pytest.mark.parametrize("pattern, resumed", [("*/o/.resume/epoch-0002.pt", 2),  # epoch 2's state in place
                                              ("*/o/.resume/.epoch-0003.pt.*.tmp", 2),  # epoch 3's not renamed
                                              ("*/o/student.json", 4)])  # the student half saved, no log
def test_a_killed_run_resumes_and_saves_the_uninterrupted_student(sel, reference, tmp_path, capsys, pattern,
                                                                    resumed):
    out = tmp_path / "o"
    env = {**os.environ, "KDATA_CRASH_AFTER": pattern}
    done = subprocess.run([sys.executable, "-m", "kdata.cli", "train", str(sel), *ARGS, "--out", str(out)],
                          check=False, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
                          timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert not (out / "train_log.json").exists() and list((out / ".resume").glob("epoch-*.pt"))
    code, so, se = _cli(capsys, "train", sel, *ARGS, "--out", out)  # no --overwrite: an unfinished run goes on
    assert code == 0, se
    assert f"kdata: resuming from epoch {resumed}/4 ({out / '.resume' / f'epoch-{resumed:04d}.pt'})" in se
    log = json.loads(so)
    _same_run(log, reference)
    assert log["resumed_from_epoch"] == resumed
    assert json.loads((out / "train_log.json").read_text())["resumed_from_epoch"] == resumed
    assert not (out / ".resume").exists() and not lock_path(out).exists()
    code, _, se = _cli(capsys, "train", sel, *ARGS, "--out", out)  # finished: refused as ever
    assert code == 2 and "already holds a trained student" in se


def test_a_killed_run_without_out_resumes_in_its_default_directory(sel, reference, tmp_path, capsys):
    """``kdata train DIR`` saves to ``DIR-student``; killed there, the same command goes on there (it
    used to start again in ``DIR-student-2``, leaving the half-trained run behind), while another
    command goes to ``DIR-student-2`` and leaves the killed run's states for its own rerun."""
    import shutil

    data = tmp_path / "sel"
    shutil.copytree(sel, data)
    env = {**os.environ, "KDATA_CRASH_AFTER": "*/sel-student/.resume/epoch-0002.pt"}
    done = subprocess.run([sys.executable, "-m", "kdata.cli", "train", str(data), *ARGS], check=False,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr
    other = [a if a != "4" else "3" for a in ARGS]  # another command (3 epochs): leaves the killed run alone
    code, so, se = _cli(capsys, "train", data, *other)
    assert code == 0 and json.loads(so)["out"].endswith("sel-student-2"), se
    assert (tmp_path / "sel-student" / ".resume" / "epoch-0002.pt").is_file()
    shutil.rmtree(tmp_path / "sel-student-2")
    code, so, se = _cli(capsys, "train", data, *ARGS)
    assert code == 0, se
    assert f"kdata: resuming from epoch 2/4 ({tmp_path / 'sel-student' / '.resume' / 'epoch-0002.pt'})" in se
    _same_run(json.loads(so), reference)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sel", "sel-student"]
    code, so, se = _cli(capsys, "train", data, *ARGS)  # finished: the next run gets a directory of its own
    assert code == 0, se
    assert (tmp_path / "sel-student-2" / "train_log.json").is_file()


@pytest.mark.usefixtures("warning_lines")  # the note read from stderr, as the CLI prints it
def test_a_rerun_with_other_settings_starts_afresh_with_one_note(sel, tmp_path, capsys):
    from kdata.pipeline.distill import train_student
    from kdata.training.train import TrainConfig

    out = tmp_path / "o"
    cfg = TrainConfig(epochs=3, device="cpu")
    with pytest.raises(Stop):
        train_student(shards=str(sel), student="builtin:digits-student", eval=None, config=cfg, out=str(out),
                      progress=stop_at("epoch 3/3"))
    assert [p.name for p in (out / ".resume").glob("epoch-*.pt")] == ["epoch-0002.pt"]
    capsys.readouterr()
    other = TrainConfig(epochs=3, device="cpu", lr=1e-3)
    log = train_student(shards=str(sel), student="builtin:digits-student", eval=None, config=other, out=str(out))
    err = capsys.readouterr().err
    assert "saved by a run with other data, student or settings" in err and "resuming from epoch" not in err
    assert log["resumed_from_epoch"] is None and log["epochs"] == 3 and not (out / ".resume").exists()
    fresh = train_student(shards=str(sel), student="builtin:digits-student", eval=None, config=other,
                          out=str(tmp_path / "fresh"))
    assert log["student_sha256"] == fresh["student_sha256"]


def test_equal_steps_resume_mid_run(sel, tmp_path):
    """--steps 10 over 4-batch epochs: epochs 1–2 in the state, the partial third run on resume."""
    from kdata.pipeline.distill import train_student
    from kdata.training.train import TrainConfig

    cfg = TrainConfig(steps=10, device="cpu", seed=3)
    kw = {"shards": str(sel), "student": "builtin:digits-student", "eval": "builtin:digits-test", "config": cfg}
    ref = train_student(**kw, out=str(tmp_path / "ref"))
    with pytest.raises(Stop):
        train_student(**kw, out=str(tmp_path / "o"), progress=stop_at("epoch 3/3"))
    log = train_student(**kw, out=str(tmp_path / "o"))
    assert log["resumed_from_epoch"] == 2 and log["steps"] == ref["steps"] == 10
    assert log["student_sha256"] == ref["student_sha256"] and log["history"] == ref["history"]


def test_a_run_with_kd3_reselections_resumes_on_the_sets_it_reselected(demo_run, tmp_path):
    """Stopped in epoch 3, after the re-selections at epochs 1 and 2: the rerun trains on epoch 1's set
    (recorded in the state), makes epoch 2's again (the stopped run's copy is dropped) and ends with the
    uninterrupted student and re-selections."""
    from kdata.pipeline.distill import train_student
    from kdata.training.train import TrainConfig

    cfg = TrainConfig(epochs=3, device="cpu", reselect_every=1, reselect_threshold=0.9)
    kw = {"shards": str(demo_run), "student": "builtin:digits-student", "eval": None, "config": cfg,
          "pool": "builtin:digits-web", "teacher": "builtin:digits-teacher"}
    ref = train_student(**kw, out=str(tmp_path / "ref"))
    out = tmp_path / "o"
    with pytest.raises(Stop):
        train_student(**kw, out=str(out), progress=stop_at("epoch 3/3"))
    assert (out / "reselect" / "reselect-epoch002").is_dir()
    log = train_student(**kw, out=str(out))
    assert log["resumed_from_epoch"] == 2 and len(ref["reselections"]) == 2
    assert log["reselections"] == ref["reselections"] and log["history"] == ref["history"]
    assert log["student_sha256"] == ref["student_sha256"]


def test_run_train_into_an_out_another_run_holds_is_refused_before_any_state_is_written(sel, tmp_path):
    """The library entry point takes OUT's lock too (kdata train always did): two runs never write one
    OUT's states. Here another thread holds it, as a second process would."""
    import threading

    from kdata.core.errors import KdataError
    from kdata.core.lock import exclusive
    from kdata.training.train import TrainConfig, run_train

    out = tmp_path / "o"
    held, release = threading.Event(), threading.Event()

    def holder():
        with exclusive(out):
            held.set()
            release.wait(60)

    t = threading.Thread(target=holder)
    t.start()
    try:
        held.wait(60)
        with pytest.raises(KdataError, match="in use by another kdata run"):
            run_train(shards=str(sel), student="builtin:digits-student", eval=None,
                      config=TrainConfig(epochs=1, device="cpu"), out=str(out))
    finally:
        release.set()
        t.join()
    assert not (out / ".resume").exists() and not (out / "student.pt2").exists()


@pytest.fixture(scope="module")
def lm_shards(tmp_path_factory):
    from tests.helpers.text_shards import clean_lm_shards

    return clean_lm_shards(tmp_path_factory.mktemp("lm") / "curated", 64)


def test_a_stopped_text_student_resumes_to_the_uninterrupted_weights(lm_shards, tmp_path, capsys):
    """A causal-LM student (dropout in training: the global RNG is part of the state), best epoch kept."""
    from kdata.training.text import TextTrainConfig, train_text

    kw = {"shards": lm_shards, "student": "builtin:text-student", "eval": "builtin:text-test",
          "config": TextTrainConfig(epochs=3, batch_size=16, keep_best=True)}
    ref = train_text(**kw, out=tmp_path / "ref")
    out = tmp_path / "o"
    with pytest.raises(Stop):
        train_text(**kw, out=out, progress=stop_at("epoch 3"))
    capsys.readouterr()
    log = train_text(**kw, out=out)
    assert f"kdata: resuming from epoch 2/3 ({out / '.resume' / 'epoch-0002.pt'})" in capsys.readouterr().err
    assert log["resumed_from_epoch"] == 2 and not (out / ".resume").exists()
    assert (out / "model.safetensors").read_bytes() == (tmp_path / "ref" / "model.safetensors").read_bytes()
    for k in ("perplexity_before", "perplexity_after", "perplexity_last", "per_epoch", "kept_epoch", "steps",
              "loss_last_epoch"):
        assert log[k] == ref[k], k
