"""Symbolic-KD from the command line on tiny real transformers models built in the test:
``kdata generate`` → label → ``kdata critic fit`` → ``kdata generate --critic`` / ``kdata critic apply`` →
``kdata select --method critic,…`` → ``kdata train``."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch

from kdata.cli import main
from kdata.dataset.writer import read_manifest, read_shards, verify
from tests.helpers.text_models import tiny_lm


@pytest.fixture(scope="module")
def lms(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("gen-lms")
    return {"teacher": tiny_lm(root / "teacher", seed=0), "student": tiny_lm(root / "student", seed=1),
            "embedder": tiny_lm(root / "embedder", seed=2)}


def write_prompts(path: Path, n: int = 12) -> Path:
    words = ("the cat", "import os", "def add(a, b):", "Return the", "a dog ran", "Open the file")
    path.write_text("\n".join(json.dumps({"id": f"p{i:02d}", "prompt": f"{words[i % len(words)]} {i}"})
                              for i in range(n)) + "\n")
    return path


def label_by_rule(gen: Path, path: Path) -> Path:
    """Stand-in for human labels: accept a candidate when the teacher found it likelier than the median."""
    t = read_shards(gen)
    nll = t.column("gen_teacher_nll").to_numpy(zero_copy_only=False)
    med = float(np.median(nll))
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["sample_id", "accept"])
        for sid, v in zip(t.column("sample_id").to_pylist(), nll):
            w.writerow([sid, int(v < med)])
    return path


def test_generate_critic_select_train(lms, tmp_path, capsys):
    T, S, E = (f"hf:{lms[k]}" for k in ("teacher", "student", "embedder"))
    prompts = write_prompts(tmp_path / "prompts.jsonl")
    gen = tmp_path / "gen"
    common = ["--prompts", str(prompts), "--per-prompt", "4", "--max-new-tokens", "10", "--device", "cpu"]
    assert main(["generate", "--teacher", T, *common, "--out", str(gen), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["counts"]["n_in"] == 48 and verify(gen) == []
    labels = label_by_rule(gen, tmp_path / "labels.csv")

    crit = tmp_path / "critic"
    assert main(["critic", "fit", "--scores-from", str(gen), "--teacher", T, "--student", S, "--labels", str(labels),
                 "--embedder", E, "--recall", "0.8", "--out", str(crit), "--device", "cpu", "--json"]) == 0
    fit = json.loads(capsys.readouterr().out)
    meta = json.loads((crit / "critic.json").read_text())
    assert meta["text"]["embedder"] == E and fit["threshold_split_recall"] >= 0.8  # the cut chosen for it
    assert fit["estimate"].startswith("cross-fitted") and 0 <= fit["val_recall"] <= 1  # the figure reported
    assert any(n.startswith("emb_") for n in meta["feature_names"]) and "teacher_nll" in meta["feature_names"]

    # apply: every scored candidate gets P(accept); accepted ⇔ ≥ threshold
    applied = tmp_path / "applied.parquet"
    assert main(["critic", "apply", str(crit), "--scores-from", str(gen), "--out", str(applied),
                 "--device", "cpu", "--json"]) == 0
    capsys.readouterr()
    a = pq.read_table(applied)
    p, acc = a.column("p_accept").to_numpy(), a.column("accept").to_numpy(zero_copy_only=False)
    assert np.array_equal(acc, p >= np.float32(meta["threshold"])) and "text" in a.column_names

    # generation with the critic: every candidate kept (≥ cut), rejected with its score (< cut) or quarantined
    gen2 = tmp_path / "gen2"
    assert main(["generate", "--teacher", T, *common, "--student", S, "--critic", str(crit), "--out", str(gen2),
                 "--seed", "7"]) == 0
    capsys.readouterr()
    dec = pq.read_table(gen2 / "decisions.parquet")
    m = read_manifest(gen2)
    c = m["counts"]
    assert c["n_in"] == 48 == c["kept"] + c["rejected"] + c["quarantined"]
    thr = m["generate"]["critic"]["threshold"]
    kept = dec.filter(pc.equal(dec.column("decision"), "kept"))
    rej = dec.filter(pc.equal(dec.column("decision"), "rejected"))
    assert (kept.column("score_critic").to_numpy() >= np.float32(thr) - 1e-6).all()
    assert (rej.column("score_critic").to_numpy() < np.float32(thr) + 1e-6).all()
    assert set(rej.column("reason").to_pylist()) <= {"critic_reject"}
    excluded = pq.read_table(gen2 / "excluded.parquet")
    assert excluded.num_rows == c["rejected"] + c["quarantined"] and "text" in excluded.column_names
    assert "## Generation" in (gen2 / "README.md").read_text()

    # select on the candidates as a text pool with the critic, then train
    sel = tmp_path / "sel"
    assert main(["select", "--pool", str(gen), "--teacher", T, "--student", S, "--method", "critic,random",
                 "--critic", str(crit), "--budget", "100%", "--out", str(sel), "--device", "cpu"]) == 0
    capsys.readouterr()
    sdec = pq.read_table(sel / "decisions.parquet")
    assert "score_critic" in sdec.column_names and sdec.num_rows == read_manifest(gen)["counts"]["kept"]
    skept = sdec.filter(pc.equal(sdec.column("decision"), "kept"))
    assert (skept.column("score_critic").to_numpy() >= np.float32(meta["threshold"]) - 1e-6).all()
    assert set(sdec.filter(pc.equal(sdec.column("decision"), "rejected")).column("reason").to_pylist()) <= \
        {"critic_reject"}
    student_out = tmp_path / "student"
    assert main(["train", str(sel), "--student", S, "--eval", "none", "--epochs", "1", "--device", "cpu",
                 "--out", str(student_out), "--json"]) == 0
    log = json.loads(capsys.readouterr().out)
    assert log["n_train"] == read_manifest(sel)["counts"]["kept"] and (student_out / "model.safetensors").is_file()


def test_bad_prompts_file_is_one_line_exit_2(lms, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "prompt": "x"}\n{"id": "a", "prompt": "y"}\n')
    rc = main(["generate", "--teacher", f"hf:{lms['teacher']}", "--prompts", str(bad), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "bad.jsonl: line 2: duplicate id 'a'" in err[0]
    assert not (tmp_path / "o").exists()


def generated_with_critic(T: str, S: str, tmp_path):
    """Candidates of 8 prompts written by T into tmp_path/gen and a critic fitted on them: (the generate
    options the rounds reuse, the critic directory)."""
    prompts = write_prompts(tmp_path / "prompts.jsonl", n=8)
    common = ["--prompts", str(prompts), "--per-prompt", "4", "--max-new-tokens", "8", "--device", "cpu"]
    assert main(["generate", "--teacher", T, *common, "--out", str(tmp_path / "gen")]) == 0
    crit = tmp_path / "critic"
    assert main(["critic", "fit", "--scores-from", str(tmp_path / "gen"), "--teacher", T, "--student", S,
                 "--labels", str(label_by_rule(tmp_path / "gen", tmp_path / "l.csv")), "--recall", "0.9",
                 "--out", str(crit), "--device", "cpu"]) == 0
    return common, crit


def test_rounds_each_round_a_dataset_with_its_card_and_a_student(lms, tmp_path, capsys):
    """I2D2: round 1 from the teacher, round 2 from the student trained in round 1."""
    T, S = f"hf:{lms['teacher']}", f"hf:{lms['student']}"
    common, crit = generated_with_critic(T, S, tmp_path)
    capsys.readouterr()
    rounds = tmp_path / "rounds"
    assert main(["generate", "--teacher", T, *common, "--student", S, "--critic", str(crit), "--rounds", "2",
                 "--epochs", "1", "--eval", "none", "--out", str(rounds), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    r1, r2 = result["rounds"]
    assert r1["generator"] == T and r2["generator"] == f"hf:{rounds / 'round-1-student'}"
    assert result["student"] == result["last_student"] == f"hf:{rounds / 'round-2-student'}"
    assert result["best"] is None  # no eval set: the last student is the one to use
    for r in (1, 2):
        d = rounds / f"round-{r}"
        m = read_manifest(d)
        assert verify(d) == [] and "## Generation" in (d / "README.md").read_text()
        assert m["generate"]["critic"]["threshold"] > 0 and m["config"]["critic_teacher"] == T
        assert (rounds / f"round-{r}-student" / "model.safetensors").is_file()
        assert read_manifest(rounds / f"round-{r}-curated")["counts"]["kept"] == m["counts"]["kept"]
    # rerun: every step is found complete and reused (the students are not trained again)
    weights = [rounds / f"round-{r}-student" / "model.safetensors" for r in (1, 2)]
    stamps = [w.stat().st_mtime_ns for w in weights]
    assert main(["generate", "--teacher", T, *common, "--student", S, "--critic", str(crit), "--rounds", "2",
                 "--epochs", "1", "--eval", "none", "--out", str(rounds), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["rounds"] == result["rounds"]
    assert [w.stat().st_mtime_ns for w in weights] == stamps
    # …and a rerun with other settings never overwrites a finished round: another --epochs is one line,
    # before any work, and round 1's student is left as it was
    assert main(["generate", "--teacher", T, *common, "--student", S, "--critic", str(crit), "--rounds", "1",
                 "--epochs", "2", "--eval", "none", "--out", str(rounds), "--json"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{rounds}: holds a different run (rounds.json: train.epochs 1 there, 2 now)" in err[0]
    assert [w.stat().st_mtime_ns for w in weights] == stamps
    assert json.loads((weights[0].parent / "train_log.json").read_text())["config"]["epochs"] == 1


def fitted_student(path: Path, texts: list[str], *, steps: int = 60) -> Path:
    """A tiny LM trained on ``texts`` (the held-out set below): a starting student that distilling the
    random teacher's babble can only make worse on it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tiny_lm(path, seed=1)
    model, tok = AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    ids = [torch.tensor([tok(t)["input_ids"]]) for t in texts]
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    torch.manual_seed(0)
    for s in range(steps):
        loss = model(input_ids=ids[s % len(ids)], labels=ids[s % len(ids)]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.save_pretrained(path)
    return path


def test_rounds_that_only_raise_the_perplexity_name_the_starting_student_best(lms, tmp_path, capsys):
    """I2D2's ``best`` counts the input student as round 0: when every round raises the held-out perplexity,
    the JSON says to keep it (round 0, the input spec)."""
    texts = ["the cat sat on the mat", "the cat sat on the hat", "a cat sat on the mat", "the dog sat on the mat"]
    heldout = tmp_path / "heldout.jsonl"
    heldout.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    T, S = f"hf:{lms['teacher']}", f"hf:{fitted_student(tmp_path / 'student', texts)}"
    common, crit = generated_with_critic(T, S, tmp_path)
    capsys.readouterr()
    assert main(["generate", "--teacher", T, *common, "--student", S, "--critic", str(crit), "--rounds", "2",
                 "--epochs", "1", "--eval", str(heldout), "--out", str(tmp_path / "rounds"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    r1, r2 = result["rounds"]
    start = r1["perplexity_before"]
    assert r1["perplexity_after"] > start and r2["perplexity_after"] > start  # both rounds drifted away
    best = result["best"]
    assert (best["round"], best["student"], best["perplexity"]) == (0, S, start)
    assert best["worse_rounds"] == [1, 2] and f"keep the original student, {S}" in best["message"]
    # the JSON's student is the one to use (the best, here the starting one); the last is named apart
    assert result["student"] == S and result["last_student"] == f"hf:{tmp_path / 'rounds' / 'round-2-student'}"
    assert r1["eval"] == r2["eval"] == str(heldout)  # each round names the eval set its perplexities are on
