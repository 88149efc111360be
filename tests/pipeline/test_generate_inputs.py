"""``kdata generate``'s inputs and endings on tiny real GPT-2 models: a prompt holding a lone surrogate is one
line before any model loads (review C1), a failed run that finished no shard leaves no work directory (N3),
options a run would ignore are refused (N2), and a run that keeps nothing warns instead of pointing at
``kdata select`` (N4)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kdata.cli import main
from kdata.pipeline.generate import work_dir
from tests.helpers.text_models import tiny_lm


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> str:
    return f"hf:{tiny_lm(tmp_path_factory.mktemp('gen-inputs') / 'teacher', seed=3)}"


def prompts_file(path: Path, n: int = 3) -> Path:
    path.write_text("".join(json.dumps({"id": f"q{i}", "prompt": f"the cat {i}"}) + "\n" for i in range(n)))
    return path


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("kdata: error: "), err
    return err[0]


@pytest.mark.parametrize("line, key", [
    ('{"id": "q1", "prompt": "the cat \\ud800 sat"}', "prompt"),
    ('{"id": "q\\udfff", "prompt": "x"}', "id"),
    ('{"id": "q1", "prompt": "x", "domain": "\\ud83d"}', "domain"),
])
def test_a_lone_surrogate_is_one_line_naming_the_file_and_line_before_any_model(tmp_path, capsys, line, key):
    bad = tmp_path / "prompts.jsonl"
    bad.write_text('{"id": "q0", "prompt": "fine \\ud83d\\ude00"}\n' + line + "\n")  # a paired one is text
    out = tmp_path / "o"
    # the teacher does not exist: the prompts are refused before any model is looked at
    assert main(["generate", "--teacher", f"hf:{tmp_path / 'no-model'}", "--prompts", str(bad),
                 "--out", str(out)]) == 2
    msg = one_error_line(capsys)
    assert f"{bad}: line 2: '{key}' holds an unpaired surrogate (U+" in msg, msg
    assert not out.exists() and not work_dir(out).exists()


def test_a_run_that_fails_before_its_first_shard_leaves_no_work_directory(teacher, tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["generate", "--teacher", teacher, "--prompts", str(prompts_file(tmp_path / "p.jsonl")),
                 "--max-new-tokens", "128", "--out", str(out), "--device", "cpu"]) == 2
    assert "--max-new-tokens 128: the model" in one_error_line(capsys)
    assert not out.exists() and not work_dir(out).exists()


@pytest.mark.parametrize("extra, says", [
    (["--student", "builtin:text-student"], "--student builtin:text-student: one generate run uses the student "
                                            "only for the critic's features"),
    (["--epochs", "2"], "--epochs: only --rounds R trains a student (--epochs) and measures it (--eval, "
                        "--test); give --rounds, or drop --epochs"),
    (["--eval", "none"], "--eval: only --rounds R trains"),
    (["--epochs", "2", "--eval", "x.jsonl"], "--epochs/--eval: only --rounds R trains"),
])
def test_options_the_run_would_ignore_are_one_line(teacher, tmp_path, capsys, extra, says):
    out = tmp_path / "o"
    assert main(["generate", "--teacher", teacher, "--prompts", str(prompts_file(tmp_path / "p.jsonl")),
                 "--out", str(out), "--device", "cpu", *extra]) == 2
    assert says in one_error_line(capsys)
    assert not out.exists() and not work_dir(out).exists()


def silent_lm(path: Path) -> str:
    """A tiny GPT-2 that ends every generation at once (the final layer norm points at EOS)."""
    from transformers import GPT2LMHeadModel

    tiny_lm(path, seed=4)
    model = GPT2LMHeadModel.from_pretrained(path)
    with torch.no_grad():
        w = model.lm_head.weight[model.config.eos_token_id]
        model.transformer.ln_f.weight.mul_(0.05)
        model.transformer.ln_f.bias.copy_(w / w.norm() ** 2 * 400.0)
    model.save_pretrained(path)
    return f"hf:{path}"


def test_a_run_that_keeps_nothing_warns_instead_of_pointing_at_select(tmp_path, capsys):
    argv = ["generate", "--teacher", silent_lm(tmp_path / "silent"), "--prompts",
            str(prompts_file(tmp_path / "p.jsonl")), "--per-prompt", "2", "--max-new-tokens", "4", "--device", "cpu"]
    assert main([*argv, "--out", str(tmp_path / "a")]) == 0
    out, err = capsys.readouterr()
    assert "next: kdata select" not in out and "6 candidates: 0 kept" in out
    warn = [ln for ln in err.splitlines() if ln.startswith("kdata: warning:")]
    assert len(warn) == 1 and "no candidate was kept (0 rejected; 6 quarantined (the generation holds no text: 6) of 6)" \
        in warn[0], err
    assert main([*argv, "--out", str(tmp_path / "b"), "--json"]) == 0  # stdout stays the JSON
    out, err = capsys.readouterr()
    assert json.loads(out)["counts"]["kept"] == 0 and "kdata: warning: no candidate was kept" in err
