"""The distillation trainer: hand-checked losses, a real short training run, saving and the CLI."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import re
import subprocess
import sys

import pytest
import torch

from kdata.cli import main
from kdata.core.atomic import current_umask
from kdata.core.errors import KdataError
from kdata.models.spec import load_model
from kdata.training.evaluate import EvalSet
from kdata.training.losses import kd_loss, nkd_loss, soft_targets
from kdata.training.train import TrainConfig, train


def _softmax(v):
    e = [math.exp(x) for x in v]
    return [x / sum(e) for x in e]


def test_soft_targets_rebuild_the_teacher_from_top_k():
    full = [2.0, 1.0, 0.0]  # teacher logits, C = 3; stored: top-2 logits and probabilities at T_s = 1
    p = _softmax(full)
    idx, z, pr = torch.tensor([[0, 1]]), torch.tensor([[2.0, 1.0]]), torch.tensor([p[:2]])
    # the missing class gets the logit that holds the remaining mass: exactly the teacher's 0.0 here
    got = soft_targets(idx, z, pr, num_classes=3, temperature=2.0, score_temperature=1.0)
    assert got[0].tolist() == pytest.approx(_softmax([1.0, 0.5, 0.0]), abs=1e-6)
    # at the scoring temperature the stored probabilities come back unchanged
    same = soft_targets(idx, z, pr, num_classes=3, temperature=1.0)
    assert same[0, :2].tolist() == pytest.approx(p[:2], abs=1e-6)


def test_kd_loss_equals_hand_computed_value():
    T, a = 2.0, 0.5
    teacher_T = [_softmax([1.0, 0.5, 0.0]), _softmax([0.0, 0.0, 1.0])]
    s = [[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]
    labels = [1, -1]  # the second row has no web label: KD only
    kl = 0.0
    for t, row in zip(teacher_T, s):
        ps = _softmax([v / T for v in row])
        kl += sum(ti * (math.log(ti) - math.log(pi)) for ti, pi in zip(t, ps))
    kl /= 2
    ce = -math.log(_softmax(s[0])[1])  # mean over the labelled rows only
    want = a * T * T * kl + (1 - a) * ce
    got = kd_loss(torch.tensor(s), torch.tensor(teacher_T), torch.tensor(labels), temperature=T, alpha=a)
    assert float(got) == pytest.approx(want, rel=1e-5)


def test_nkd_loss_equals_hand_computed_value():
    T, a, g = 2.0, 0.7, 1.5
    t1 = [_softmax([2.0, 1.0, 0.0])]
    tT = [_softmax([1.0, 0.5, 0.0])]
    s = [[0.5, 1.0, -0.5]]
    y = 2  # a web label the teacher gives little mass: the target term is down-weighted by t_y
    s1 = _softmax(s[0])
    target_term = -t1[0][y] * math.log(s1[y])
    nt = [0, 1]
    tn = [tT[0][i] / sum(tT[0][j] for j in nt) for i in nt]
    sn = _softmax([s[0][i] / T for i in nt])
    non_target = -sum(ti * math.log(si) for ti, si in zip(tn, sn))
    ce = -math.log(s1[y])
    want = a * (target_term + g * T * T * non_target) + (1 - a) * ce
    got = nkd_loss(torch.tensor(s), torch.tensor(t1), torch.tensor(tT), torch.tensor([y]), temperature=T, alpha=a,
                   gamma=g)
    assert float(got) == pytest.approx(want, rel=1e-5)


@pytest.fixture(scope="module")
def balanced_run(tmp_path_factory, builtin_models):
    """A class-balanced random 30% of the built-in pool, written by the real pipeline."""
    from kdata.pipeline.config import RunOptions, SelectConfig
    from kdata.pipeline.run import run_select

    out = tmp_path_factory.mktemp("balanced") / "out"
    run_select(SelectConfig(method="random", budget="0.3", balance="class"), out=str(out),
               opts=RunOptions(device="cpu"))
    return out


def test_short_training_improves_over_the_untrained_student(balanced_run):
    student = load_model("builtin:digits-student")
    ev = EvalSet("builtin:digits-test", model=student)
    log = train(student, balanced_run, config=TrainConfig(epochs=8, lr=1e-2, reinit=True, seed=0, device="cpu",
                                                          eval_every_epoch=False), eval_set=ev)
    assert log["n_train"] == 437 and log["epochs"] == 8 and len(log["history"]) == 8
    assert log["accuracy_before"] < 0.3  # re-initialised: about chance
    assert log["accuracy"] > log["accuracy_before"] + 0.15
    assert log["history"][-1]["loss"] < log["history"][0]["loss"]


@pytest.mark.parametrize("kind", ["pt2", "pt"])
def test_reinit_of_a_student_file_is_refused_not_ignored(balanced_run, tmp_path, kind, capsys):
    """An exported program keeps weights, not initialisers: ``--reinit`` would train from the given
    weights while the log said otherwise. It is one line, exit 2."""
    from kdata.models.files import export_model

    builtin = load_model("builtin:digits-student")
    path = tmp_path / f"student.{kind}"
    export_model(builtin.module, path, input_size=builtin.input_size, mean=builtin.mean, std=builtin.std,
                 class_names=builtin.class_names, kind=kind)
    with pytest.raises(KdataError, match="--reinit: this student has no layers to initialise afresh"):
        train(load_model(str(path)), balanced_run, config=TrainConfig(epochs=1, reinit=True, device="cpu"))
    rc = main(["train", str(balanced_run), "--student", str(path), "--reinit", "--epochs", "1",
               "--out", str(tmp_path / "o"), "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith(f"kdata: error: {path}: --reinit")
    assert not (tmp_path / "o" / "student.pt2").exists()


def test_training_is_seeded_by_its_config_and_leaves_the_callers_rng_alone(balanced_run):
    """train() seeded torch's global RNG with torch.manual_seed and left it there: a library caller's
    random stream moved. Now it runs in a fork of the RNG: the same seed gives the same weights whatever
    the caller's RNG state, and the caller's stream continues as if train() had not run."""
    config = TrainConfig(epochs=1, seed=7, device="cpu", workers=0, eval_every_epoch=False)
    weights = []
    for caller_seed in (0, 123):
        torch.manual_seed(caller_seed)
        want = torch.rand(3)
        torch.manual_seed(caller_seed)
        student = load_model("builtin:digits-student", device="cpu")
        train(student, balanced_run, config=config)
        assert torch.equal(torch.rand(3), want)
        weights.append({k: v.clone() for k, v in student.module.state_dict().items()})
    assert weights[0].keys() == weights[1].keys()
    for k in weights[0]:
        assert torch.equal(weights[0][k], weights[1][k]), k
    start = load_model("builtin:digits-student", device="cpu").module.state_dict()
    assert any(not torch.equal(start[k], weights[0][k]) for k in start)  # it did train


def test_cli_json_saves_a_student_that_kdata_select_can_use(demo_run, tmp_path, capsys, builtin_models):
    out = tmp_path / "student"
    rc = main(["train", str(demo_run), "--eval", "builtin:digits-test", "--epochs", "1",
               "--out", str(out), "--json", "--device", "cpu"])
    assert rc == 0
    rep = json.loads(capsys.readouterr().out)
    for key in ("accuracy", "n_train", "epochs", "seconds", "accuracy_before", "files", "history"):
        assert key in rep
    assert rep["n_train"] == 437 and rep["epochs"] == 1 and 0.0 <= rep["accuracy"] <= 1.0
    assert (out / "student.pt2").is_file() and (out / "student.json").is_file()
    log = json.loads((out / "train_log.json").read_text())
    assert log["accuracy"] == pytest.approx(rep["accuracy"])
    # the exported student scores and selects like any model spec
    sel = tmp_path / "sel"
    rc = main(["select", "--student", str(out / "student.pt2"), "--method", "random", "--budget", "50",
               "--out", str(sel), "--json", "--quiet"])
    assert rc == 0
    rep2 = json.loads(capsys.readouterr().out)
    assert rep2["counts"]["kept"] == 50
    manifest = json.loads((sel / "manifest.json").read_text())
    assert manifest["models"]["student"]["spec"] == str(out / "student.pt2")
    # and its accuracy, measured through the loader, is the one the trainer reported
    ev = EvalSet("builtin:digits-test", model=load_model(str(out / "student.pt2")))
    assert ev.accuracy(load_model(str(out / "student.pt2"))) == pytest.approx(rep["accuracy"], abs=0.005)


def test_reselect_every_rescoring_with_kd3(demo_run, tmp_path, capsys, builtin_models):
    rc = main(["train", str(demo_run), "--epochs", "2", "--reselect-every", "1", "--pool",
               "builtin:digits-web", "--teacher", "builtin:digits-teacher", "--json", "--device", "cpu",
               "--out", str(tmp_path / "o")])
    assert rc == 0
    rep = json.loads(capsys.readouterr().out)
    assert [r["epoch"] for r in rep["reselections"]] == [1]
    assert rep["reselections"][0]["rows"] == 437 and rep["n_train"] == 437
    assert (tmp_path / "o" / "reselect" / "reselect-epoch001" / "data").is_dir()
    first = json.loads((tmp_path / "o" / "reselect" / "reselect-epoch001" / "manifest.json").read_text())
    # --overwrite with another seed: the re-selections are this run's, not the first student's
    rc = main(["train", str(demo_run), "--epochs", "2", "--reselect-every", "1", "--pool", "builtin:digits-web",
               "--teacher", "builtin:digits-teacher", "--json", "--device", "cpu", "--out", str(tmp_path / "o"),
               "--seed", "7", "--overwrite"])
    assert rc == 0, capsys.readouterr().err
    again = json.loads((tmp_path / "o" / "reselect" / "reselect-epoch001" / "manifest.json").read_text())
    assert again["config"]["seed"] == 7 and again["config_hash"] != first["config_hash"]
    log = json.loads((tmp_path / "o" / "train_log.json").read_text())
    assert log["student_sha256"] == hashlib.sha256((tmp_path / "o" / "student.pt2").read_bytes()).hexdigest()
    assert (tmp_path / "o" / "student.pt2").stat().st_mode & 0o777 == 0o666 & ~current_umask()


def test_reselect_threshold_is_kd3s_confidence_cut(demo_run, tmp_path, capsys, builtin_models):
    """KD³ as the paper runs it: each re-selection also drops rows below the confidence cut τ."""
    import pyarrow.parquet as pq

    rc = main(["train", str(demo_run), "--epochs", "2", "--reselect-every", "1", "--reselect-threshold", "0.9",
               "--pool", "builtin:digits-web", "--teacher", "builtin:digits-teacher", "--json", "--device", "cpu",
               "--out", str(tmp_path / "o")])
    assert rc == 0
    r = json.loads(capsys.readouterr().out)["reselections"][0]
    assert r["threshold"] == 0.9 and 0 < r["rows"] < 437
    dec = pq.read_table(tmp_path / "o" / "reselect" / "reselect-epoch001" / "decisions.parquet").to_pylist()
    low = [d for d in dec if d["reason"] == "kd3_low_confidence"]
    assert low and all(d["score_kd3"] < 0.9 for d in low)
    assert all(d["score_kd3"] >= 0.9 for d in dec if d["decision"] == "kept")


@pytest.mark.parametrize("argv, msg", [
    (["--alpha", "1.5"], "--alpha"),
    (["--reselect-every", "1"], "--pool and --teacher"),
    (["--reselect-threshold", "0.5"], "--reselect-threshold"),
    (["--out", "FILE"], "exists and is not a directory"),
    (["--out", "DEMO/student"], "inside the curated dataset"),
    (["--out", "OTHER"], "is the kdata dataset"),  # another curated dataset: its manifest does not list a student
    (["--out", "OTHER/data"], "inside the kdata dataset"),
])
def test_bad_input_one_line_exit_2(demo_run, tmp_path, capsys, argv, msg):
    import shutil

    (tmp_path / "FILE").write_text("not a directory")
    other = tmp_path / "other"
    (other / "data").mkdir(parents=True)
    shutil.copy(demo_run / "manifest.json", other / "manifest.json")
    argv = [str(tmp_path / "FILE") if a == "FILE" else a.replace("DEMO", str(demo_run)).replace("OTHER", str(other))
            for a in argv]
    rc = main(["train", str(demo_run), "--epochs", "1", "--device", "cpu", *argv])
    err = capsys.readouterr().err
    assert rc == 2 and msg in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in other.rglob("*")) == ["data", "manifest.json"]  # nothing written there


def test_missing_dataset_is_one_line_and_nothing_is_created(tmp_path, capsys):
    rc = main(["train", str(tmp_path / "nope"), "--epochs", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and "not found" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "nope-student").exists()


def run_proc(*args):
    p = subprocess.run([sys.executable, "-m", "kdata.cli", *args], capture_output=True, text=True,
                       env=dict(os.environ), timeout=300, check=False)
    return p.returncode, p.stdout, p.stderr


def run_cli(*args):
    """``kdata ARGS`` in this process (the entry point's own process is tested in tests/cli): (exit code,
    stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def small_run(tmp_path_factory, builtin_models):
    """A 10% curation (145 rows) of the built-in pool, written by the real CLI."""
    out = tmp_path_factory.mktemp("small") / "curated"
    assert main(["select", "--budget", "0.1", "--out", str(out), "--quiet", "--device", "cpu"]) == 0
    return out


def test_train_saves_beside_the_dataset_and_keeps_the_better_weights(small_run):
    """`kdata train DIR` without --out saves to DIR-student beside DIR. Two epochs on 145 rows make the
    built-in student worse: the CLI says so plainly and saves the starting weights, which scored better."""
    code, out, err = run_cli("train", str(small_run), "--epochs", "2")
    assert code == 0 and err.startswith("kdata: warning: training made the student worse on builtin:digits-test")
    assert len(err.strip().splitlines()) == 1, err  # the warning goes to stderr, the summary to stdout
    target = small_run.parent / "curated-student"
    assert (target / "student.pt2").is_file() and not list(small_run.rglob("student*"))
    assert f"saved to {target}  (the default beside the dataset" in out
    log = json.loads((target / "train_log.json").read_text())
    assert log["eval"] == "builtin:digits-test"  # the default eval set of the built-in student
    assert log["worse_than_before"] and log["accuracy_last"] < log["accuracy_before"] - 0.1
    assert log["kept"]["epoch"] == 0 and log["accuracy"] == log["accuracy_before"]
    assert re.search(r"before training 0\.\d{4} → after the last epoch 0\.\d{4}", out)
    assert "warning" not in out
    assert "kept the starting weights" in out
    saved = load_model(str(target / "student.pt2"))
    assert EvalSet("builtin:digits-test", model=saved).accuracy(saved) == pytest.approx(log["accuracy_before"],
                                                                                        abs=0.005)
    # a second run keeps the first student: it goes to the next free name
    code, out, err = run_cli("train", str(small_run), "--epochs", "1", "--json", "--eval", "none")
    rep = json.loads(out)
    assert code == 0 and rep["out"] == str(small_run.parent / "curated-student-2") and rep["accuracy"] is None
    assert (target / "student.pt2").is_file()


def test_an_explicit_out_holding_a_student_is_refused_without_overwrite(small_run, tmp_path):
    """`--out` never replaces a saved student by accident: the second run is one line, exit 2, and the
    first student is untouched; `--overwrite` replaces it; a second run while one holds OUT fails at once."""
    from kdata.core.lock import exclusive

    target = tmp_path / "student"
    code, _, err = run_cli("train", str(small_run), "--epochs", "1", "--eval", "none", "--out", str(target))
    assert code == 0, err
    before = (target / "student.pt2").read_bytes()
    code, out, err = run_cli("train", str(small_run), "--epochs", "1", "--eval", "none", "--out", str(target),
                             "--seed", "3")
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert "already holds a trained student (train_log.json)" in err and "--overwrite" in err
    assert (target / "student.pt2").read_bytes() == before
    with exclusive(target):  # held here, so the run is another process, as a concurrent run would be
        code, _, err = run_proc("train", str(small_run), "--epochs", "1", "--eval", "none", "--out", str(target),
                               "--overwrite")
    assert code == 2 and "in use by another kdata run" in err
    code, out, err = run_cli("train", str(small_run), "--epochs", "1", "--eval", "none", "--out", str(target),
                             "--seed", "3", "--overwrite", "--json")
    assert code == 0 and json.loads(out)["config"]["seed"] == 3, err
    assert json.loads((target / "train_log.json").read_text())["config"]["seed"] == 3


def test_keep_best_ends_with_the_best_epoch_and_reports_progress(small_run):
    """The weights returned are the best on the eval set (the start included); progress goes through
    the CLI's rich bars as ``progress(stage, done, total)``."""
    from rich.console import Console

    from kdata.cli.common import ProgressBars

    buf = io.StringIO()
    bars = ProgressBars(console=Console(file=buf, force_terminal=True, width=100))
    calls = []

    def progress(stage, done=None, total=None):
        calls.append((stage, done, total))
        bars(stage, done, total)

    student = load_model("builtin:digits-student")
    ev = EvalSet("builtin:digits-test", model=student)
    log = train(student, small_run, config=TrainConfig(epochs=5, device="cpu"), eval_set=ev, progress=progress)
    accs = [log["accuracy_before"]] + [h["accuracy"] for h in log["history"]]
    assert log["accuracy"] == max(accs) and log["kept"]["epoch"] == accs.index(max(accs))
    assert ev.accuracy(student) == pytest.approx(log["accuracy"])
    assert list(dict.fromkeys(c[0] for c in calls)) == ["evaluating"] + [f"epoch {e}/5" for e in range(1, 6)]
    assert calls[-1] == ("epoch 5/5", 145, 145)
    assert "epoch 5/5" in buf.getvalue() and "145/145" in buf.getvalue()
    # keep_best off: the last epoch's weights stay
    student = load_model("builtin:digits-student")
    log = train(student, small_run, config=TrainConfig(epochs=2, device="cpu", keep_best=False), eval_set=ev)
    assert log["kept"]["epoch"] == 2 and ev.accuracy(student) == pytest.approx(log["accuracy_last"])


def test_demo_compares_curated_random_and_teacher(demo_run):
    from kdata.pipeline.config import SelectConfig
    from kdata.pipeline.demo import compare_training

    acc = compare_training(SelectConfig(), out=str(demo_run), n_kept=437, epochs=2)
    assert acc["rows"] == 437 and acc["epochs"] == 2
    assert acc["teacher"] > 0.9 and acc["student_before"] == pytest.approx(0.83, abs=0.05)
    for key in ("student_curated", "student_random"):
        assert 0.0 < acc[key] <= 1.0


def test_a_torchscript_student_trains_and_is_saved_as_torchscript(demo_run, tmp_path, capsys):
    """A `.pt` student cannot go through torch.export; it is written back as TorchScript, and loads."""
    from tests.helpers.real_inputs import exported_models

    out = tmp_path / "ts-student"
    rc = main(["train", str(demo_run), "--student", exported_models()["student_pt"], "--epochs", "1",
               "--eval", "builtin:digits-test", "--out", str(out), "--json", "--quiet", "--device", "cpu"])
    rep = json.loads(capsys.readouterr().out)
    assert rc == 0 and rep["files"]["student"] == str(out / "student.pt") and not (out / "student.pt2").exists()
    saved = load_model(str(out / "student.pt"))
    assert EvalSet("builtin:digits-test", model=saved).accuracy(saved) == pytest.approx(rep["accuracy"], abs=0.005)


def test_a_student_of_other_classes_is_one_line_naming_both(demo_run, tmp_path, capsys):
    from tests.helpers.real_inputs import exported_models

    rc = main(["train", str(demo_run), "--student", exported_models()["student4_pt2"], "--epochs", "1",
               "--eval", "none", "--out", str(tmp_path / "s"), "--quiet", "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err
    assert "labelled with 10 classes (0, 1, 2, 3, …)" in err and "predicts 4 (0, 1, 2, 3)" in err


def test_without_student_it_trains_the_student_the_dataset_was_selected_with(tmp_path, capsys, builtin_models):
    from tests.helpers.real_inputs import exported_models

    student = exported_models()["student_pt2"]
    sel = tmp_path / "sel"
    assert main(["select", "--student", student, "--method", "random", "--budget", "40", "--out", str(sel),
                 "--quiet", "--device", "cpu"]) == 0
    assert main(["train", str(sel), "--epochs", "1", "--out", str(tmp_path / "s"), "--device", "cpu",
                 "--quiet"]) == 0
    out = capsys.readouterr().out
    assert f"kdata: trained {student} on 40 rows" in out
    assert f"--student not given: the student {sel} was selected with (its manifest)" in out
