"""hf:PATH model files that are not what they claim: one KdataError line naming the file, before any scoring.

Real tiny GPT-2 directories built in the test, then altered: weights that lack tensors (an empty
safetensors file, one layer's weights under a config of many), a tokenizer.json that makes the Rust
tokenizer panic (a pyo3 PanicException, a BaseException), a token id past the embedding rows.
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("transformers")

from kdata.core.errors import KdataError  # noqa: E402
from kdata.models.hf import load_hf  # noqa: E402
from tests.helpers.text_models import tiny_lm, write_jsonl  # noqa: E402


def _edit_json(path, fn):
    d = json.loads(path.read_text())
    fn(d)
    path.write_text(json.dumps(d))


def _one_line(exc: KdataError, name: str) -> str:
    msg = str(exc)
    assert "\n" not in msg and name in msg, msg
    return msg


def test_a_normal_directory_loads(tmp_path):
    m = load_hf(tiny_lm(tmp_path / "ok"))
    assert m.kind == "causal_lm" and m.path == str(tmp_path / "ok")


def test_empty_safetensors_is_refused_naming_the_file(tmp_path):
    from safetensors.torch import save_file

    d = tiny_lm(tmp_path / "m")
    save_file({}, str(d / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(KdataError) as e:
        load_hf(d)
    msg = _one_line(e.value, str(d / "model.safetensors"))
    assert "0 tensor" in msg or "parameter" in msg


@pytest.mark.parametrize("layers", [2, 50])
def test_weights_for_fewer_layers_than_the_config_are_refused(tmp_path, layers):
    d = tiny_lm(tmp_path / "m", n_layer=1)
    _edit_json(d / "config.json", lambda c: c.update(n_layer=layers))
    with pytest.raises(KdataError) as e:
        load_hf(d)
    _one_line(e.value, str(d / "model.safetensors"))


def test_a_mis_shaped_tensor_is_refused(tmp_path):
    d = tiny_lm(tmp_path / "m", n_positions=128)
    _edit_json(d / "config.json", lambda c: c.update(n_positions=256))
    with pytest.raises(KdataError) as e:
        load_hf(d)
    assert "shape" in _one_line(e.value, str(d / "model.safetensors"))


def _hostile_precompiled(tk):
    tk["normalizer"] = {"type": "Precompiled", "precompiled_charsmap": "AAAA"}


def _hostile_template(tk):
    tk["post_processor"] = {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "[X]", "type_id": 0}}],
                            "pair": [], "special_tokens": {}}


@pytest.mark.parametrize("edit", [_hostile_precompiled, _hostile_template], ids=["precompiled", "template"])
def test_a_panicking_tokenizer_is_one_line_at_load(tmp_path, edit):
    d = tiny_lm(tmp_path / "m")
    _edit_json(d / "tokenizer.json", edit)
    with pytest.raises(KdataError) as e:
        load_hf(d)
    _one_line(e.value, str(d / "tokenizer.json"))


def test_a_tokenizer_panic_during_scoring_is_one_line(tmp_path):
    """A tokenizer that panics only on the pool's texts: the scoring-side encode turns it into one line."""
    from transformers import PreTrainedTokenizerFast

    from kdata.scoring.text_batches import tokenize, tokenize_bytes

    m = load_hf(tiny_lm(tmp_path / "m"))
    bad = tmp_path / "bad.json"
    bad.write_text((tmp_path / "m" / "tokenizer.json").read_text())
    _edit_json(bad, _hostile_template)
    m.tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(bad), eos_token="<|endoftext|>")
    for fn in (tokenize, tokenize_bytes):
        with pytest.raises(KdataError) as e:
            fn(m, ["hello world"])
        _one_line(e.value, str(tmp_path / "m" / "tokenizer.json"))


def test_a_token_id_beyond_the_embedding_rows_is_refused(tmp_path):
    d = tiny_lm(tmp_path / "m")
    _edit_json(d / "tokenizer.json", lambda tk: tk["added_tokens"].append(
        {"id": 4000, "content": "XQZ", "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": False}))
    with pytest.raises(KdataError) as e:
        load_hf(d)
    assert "token id" in _one_line(e.value, str(d / "tokenizer.json"))


def test_cli_refuses_an_empty_safetensors_teacher_in_one_line(tmp_path, capsys):
    from safetensors.torch import save_file

    from kdata.cli import main

    t = tiny_lm(tmp_path / "t")
    s = tiny_lm(tmp_path / "s", seed=1, n_embd=16)
    save_file({}, str(t / "model.safetensors"), metadata={"format": "pt"})
    pool = write_jsonl(tmp_path / "pool.jsonl", n=6)
    capsys.readouterr()
    out = tmp_path / "out"
    code = main(["select", "--pool", str(pool), "--teacher", f"hf:{t}", "--student", f"hf:{s}",
                 "--budget", "0.5", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and not out.exists(), err
    assert len(err.splitlines()) == 1 and err.startswith(f"kdata: error: {t / 'model.safetensors'}: "), err


def test_cli_refuses_a_panicking_tokenizer_in_one_line_on_stderr(tmp_path, capfd):
    """The Rust panic hook writes to fd 2 itself: the run's whole stderr is still the one kdata line."""
    from kdata.cli import main

    t = tiny_lm(tmp_path / "t")
    s = tiny_lm(tmp_path / "s", seed=1, n_embd=16)
    _edit_json(t / "tokenizer.json", _hostile_template)
    pool = write_jsonl(tmp_path / "pool.jsonl", n=6)
    capfd.readouterr()
    out = tmp_path / "out"
    code = main(["select", "--pool", str(pool), "--teacher", f"hf:{t}", "--student", f"hf:{s}",
                 "--budget", "0.5", "--out", str(out)])
    err = capfd.readouterr().err.strip()
    assert code == 2 and not out.exists(), err
    assert len(err.splitlines()) == 1 and err.startswith(f"kdata: error: {t / 'tokenizer.json'}: "), err
