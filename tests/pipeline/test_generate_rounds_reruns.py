"""Reruns of ``kdata generate --rounds`` on tiny real GPT-2 models: another --eval is measured again without
retraining (review S6), other settings never overwrite a finished round (L1), OUT is locked for the whole run
and the training step is locked too (L2), and a moved OUT reruns (N8)."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from kdata.cli import main
from kdata.core.errors import KdataError
from kdata.pipeline.generate_rounds import distill, held_out_perplexity
from kdata.training.text import TextTrainConfig
from tests.e2e.test_generate_cli import label_by_rule, write_prompts
from tests.helpers.text_models import WORDS, tiny_lm


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> dict:
    """A finished one-round run (``--eval A``, 1 epoch) and the command that made it."""
    root = tmp_path_factory.mktemp("rounds-reruns")
    T, S = f"hf:{tiny_lm(root / 'teacher', seed=0)}", f"hf:{tiny_lm(root / 'student', seed=1)}"
    prompts = write_prompts(root / "prompts.jsonl", n=8)
    common = ["--prompts", str(prompts), "--per-prompt", "4", "--max-new-tokens", "8", "--device", "cpu"]
    assert main(["generate", "--teacher", T, *common, "--out", str(root / "gen")]) == 0
    assert main(["critic", "fit", "--scores-from", str(root / "gen"), "--teacher", T, "--student", S,
                 "--labels", str(label_by_rule(root / "gen", root / "l.csv")), "--recall", "0.9",
                 "--out", str(root / "critic"), "--device", "cpu"]) == 0
    evals = {}
    for name, words in (("A", WORDS[:3]), ("B", WORDS[3:])):
        evals[name] = root / f"eval-{name}.jsonl"
        evals[name].write_text("".join(json.dumps({"text": f"{w} {i}"}) + "\n" for i, w in enumerate(words * 2)))
    argv = ["generate", "--teacher", T, *common, "--student", S, "--critic", str(root / "critic"), "--rounds", "1",
            "--epochs", "1", "--json"]
    assert main([*argv, "--eval", str(evals["A"]), "--out", str(root / "out")]) == 0
    return {"root": root, "argv": argv, "eval": evals, "out": root / "out", "S": S}


def copy_of(base, tmp_path: Path) -> Path:
    out = tmp_path / "out"
    shutil.copytree(base["out"], out)
    return out


def weights(out: Path) -> tuple[str, int]:
    w = out / "round-1-student" / "model.safetensors"
    return hashlib.sha256(w.read_bytes()).hexdigest(), w.stat().st_mtime_ns


def rerun(base, out: Path, *extra: str) -> int:
    return main([*base["argv"], "--out", str(out), *extra])


def test_another_eval_set_is_measured_again_without_retraining(base, tmp_path, capsys):
    out = copy_of(base, tmp_path)
    before = weights(out)
    capsys.readouterr()
    assert rerun(base, out, "--eval", str(base["eval"]["B"])) == 0
    result = json.loads(capsys.readouterr().out)
    r = result["rounds"][0]
    assert weights(out) == before  # not retrained
    assert r["eval"] == str(base["eval"]["B"])
    log = json.loads((out / "round-1-student" / "train_log.json").read_text())
    assert log["eval"] == str(base["eval"]["B"]) and log["perplexity_after"] == r["perplexity_after"]
    cfg = replace(TextTrainConfig(), epochs=1, device="cpu")
    want_before, _ = held_out_perplexity(base["S"], str(base["eval"]["B"]), cfg)
    want_after, _ = held_out_perplexity(f"hf:{out / 'round-1-student'}", str(base["eval"]["B"]), cfg)
    assert (r["perplexity_before"], r["perplexity_after"]) == (want_before, want_after)
    # the same numbers as a fresh run that trained with --eval B from the start
    assert rerun(base, tmp_path / "fresh", "--eval", str(base["eval"]["B"])) == 0
    fresh = json.loads(capsys.readouterr().out)["rounds"][0]
    assert (r["perplexity_before"], r["perplexity_after"]) == \
        pytest.approx((fresh["perplexity_before"], fresh["perplexity_after"]), rel=1e-5)
    # back to A: A's numbers again; and --eval none: none
    assert rerun(base, out, "--eval", str(base["eval"]["A"])) == 0
    a = json.loads(capsys.readouterr().out)["rounds"][0]
    orig = json.loads((base["out"] / "round-1-student" / "train_log.json").read_text())
    assert (a["eval"], a["perplexity_after"]) == (str(base["eval"]["A"]), pytest.approx(orig["perplexity_after"]))
    assert rerun(base, out, "--eval", "none") == 0
    n = json.loads(capsys.readouterr().out)
    assert n["rounds"][0]["eval"] is None and n["rounds"][0]["perplexity_after"] is None and n["best"] is None
    assert weights(out) == before


def test_other_settings_are_refused_before_any_work_and_leave_the_round_as_it_was(base, tmp_path, capsys):
    out = copy_of(base, tmp_path)
    before = weights(out)
    manifests = {d: (out / d / "manifest.json").read_bytes() for d in ("round-1", "round-1-curated")}
    capsys.readouterr()
    for old, new, says in (("--epochs", "2", "train.epochs 1 there, 2 now"),
                           ("--per-prompt", "3", "per_prompt 4 there, 3 now"),
                           ("--critic-recall", "0.5", "critic_threshold")):
        argv = list(base["argv"])
        if old in argv:
            argv[argv.index(old) + 1] = new
        else:
            argv += [old, new]
        assert main([*argv, "--out", str(out), "--eval", str(base["eval"]["A"])]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"kdata: error: {out}: holds a different run (rounds.json: {says}" in err[0], err
        assert weights(out) == before
        assert {d: (out / d / "manifest.json").read_bytes() for d in manifests} == manifests
    assert not (out / "round-2").exists()


def test_a_finished_student_is_never_trained_over(base, tmp_path):
    """``distill`` (every round and the generate flow's distill task) refuses other training settings."""
    out = copy_of(base, tmp_path)
    before = weights(out)
    with pytest.raises(KdataError, match=r"round-1-student: holds a different run \(a student trained with "
                                         r"epochs 1, this run 2\)"):
        distill(out / "round-1-curated", student=base["S"], out=out / "round-1-student", device="cpu",
                train_config=replace(TextTrainConfig(), epochs=2), eval_spec="")
    with pytest.raises(KdataError, match=r"holds a different run \(a student trained from "):
        distill(out / "round-1-curated", student=f"hf:{base['root'] / 'teacher'}", out=out / "round-1-student",
                device="cpu", train_config=replace(TextTrainConfig(), epochs=1), eval_spec="")
    assert weights(out) == before


def test_rounds_written_by_an_older_kdata_are_refused(base, tmp_path, capsys):
    out = copy_of(base, tmp_path)
    (out / "rounds.json").unlink()
    capsys.readouterr()
    assert rerun(base, out, "--eval", str(base["eval"]["A"])) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds a different run (round directories without rounds.json" in err[0]
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert rerun(base, other, "--eval", "none") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{other}: --out is not empty and holds no rounds.json (e.g. notes.txt)" in err[0]
    assert sorted(p.name for p in other.iterdir()) == ["notes.txt"]


HOLD = "import sys, time\nfrom kdata.core.lock import exclusive\nwith exclusive(sys.argv[1]):\n" \
       "    print('held', flush=True)\n    time.sleep(120)\n"


def held(target: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(target)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_out_is_locked_for_the_whole_run_training_included(base, tmp_path, capsys):
    out = tmp_path / "new"
    proc = held(out)
    try:
        capsys.readouterr()
        assert rerun(base, out, "--eval", "none") == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"{out}: in use by another kdata run" in err[0], err
        assert not (out / "round-1").exists()
    finally:
        proc.kill()
        proc.wait()
    copy = copy_of(base, tmp_path)
    shutil.rmtree(copy / "round-1-student")
    proc = held(copy / "round-1-student")  # the training step alone (the generate flow's distill task)
    try:
        with pytest.raises(KdataError, match="round-1-student: in use by another kdata run"):
            distill(copy / "round-1-curated", student=base["S"], out=copy / "round-1-student", device="cpu",
                    train_config=replace(TextTrainConfig(), epochs=1), eval_spec="")
    finally:
        proc.kill()
        proc.wait()
    assert not (copy / "round-1-student" / "model.safetensors").exists()


def test_a_moved_out_reruns_every_finished_step(base, tmp_path, capsys):
    moved = tmp_path / "elsewhere" / "moved"
    moved.parent.mkdir()
    shutil.copytree(base["out"], moved)
    before = weights(moved)
    stamps = {d: (moved / d / "manifest.json").stat().st_mtime_ns for d in ("round-1", "round-1-curated")}
    capsys.readouterr()
    assert rerun(base, moved, "--eval", str(base["eval"]["A"])) == 0
    result = json.loads(capsys.readouterr().out)
    assert weights(moved) == before
    assert {d: (moved / d / "manifest.json").stat().st_mtime_ns for d in stamps} == stamps
    orig = json.loads((base["out"] / "round-1-student" / "train_log.json").read_text())
    assert result["rounds"][0]["perplexity_after"] == orig["perplexity_after"]
    assert result["rounds"][0]["student"] == str(moved / "round-1-student")


def test_test_texts_give_the_chosen_students_perplexity_without_the_choice(base, tmp_path, capsys):
    """--eval chooses the best round; --test (texts that chose nothing) measures the starting, last and chosen
    students on other texts, without retraining; the eval set itself is refused as a test set."""
    out = copy_of(base, tmp_path)
    before = weights(out)
    capsys.readouterr()
    assert rerun(base, out, "--eval", str(base["eval"]["A"]), "--test", str(base["eval"]["B"])) == 0
    result = json.loads(capsys.readouterr().out)
    assert weights(out) == before
    assert result["best"]["chosen_on"] == str(base["eval"]["A"])
    cfg = replace(TextTrainConfig(), epochs=1, device="cpu")
    start, n = held_out_perplexity(base["S"], str(base["eval"]["B"]), cfg)
    last, _ = held_out_perplexity(f"hf:{out / 'round-1-student'}", str(base["eval"]["B"]), cfg)
    t = result["test"]
    assert (t["spec"], t["n"], t["perplexity_start"], t["perplexity_last"]) == (str(base["eval"]["B"]), n, start, last)
    assert t["perplexity_best"] == (start if result["best"]["round"] == 0 else last)
    assert result["best"]["perplexity"] != t["perplexity_best"]  # other texts, another figure
    # the human summary says which set chose, and how to get a figure that is not biased by the choice
    human = [a for a in base["argv"] if a != "--json"]
    assert main([*human, "--out", str(out), "--eval", str(base["eval"]["A"])]) == 0
    printed = capsys.readouterr().out
    assert "the set that chose it" in printed and "--test TEXT" in printed
    # a copy of the eval set under another name is still the eval set: refused before any work
    same = tmp_path / "same.jsonl"
    same.write_bytes(base["eval"]["A"].read_bytes())
    assert main([*base["argv"], "--out", str(out), "--eval", str(base["eval"]["A"]), "--test", str(same)]) == 2
    assert "same texts as the eval set" in capsys.readouterr().err
    assert weights(out) == before


def test_test_without_rounds_is_refused(base, tmp_path, capsys):
    argv = base["argv"][:base["argv"].index("--student")]
    assert main([*argv, "--out", str(tmp_path / "x"), "--test", str(base["eval"]["B"])]) == 2
    assert "--test: only --rounds R" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
