"""hf:PATH models: kinds, weights-only loading, refusals (one line each), max_length, checksums."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

pytest.importorskip("transformers")

from kdata.core.errors import KdataError  # noqa: E402
from kdata.core.extras import require  # noqa: E402
from kdata.models.hf import load_hf, same_tokenizer  # noqa: E402
from kdata.models.spec import load_model  # noqa: E402
from tests.helpers.text_models import text_assets, tiny_lm  # noqa: E402


def _logits(m, text="hello world"):
    ids = torch.tensor([m.tokenizer(text)["input_ids"]])
    with torch.inference_mode():
        return m.model(input_ids=ids).logits


def test_causal_lm_and_classifier_load_with_their_kind():
    d = text_assets()
    lm = load_model(f"hf:{d / 't'}", device="cpu")
    assert lm.kind == "causal_lm" and lm.class_names == [] and lm.precision == "fp32"
    assert lm.max_length == 128  # n_positions of the tiny config caps the default 512
    assert next(lm.model.parameters()).dtype == torch.float32
    clf = load_model(f"hf:{d / 'c1'}", device="cpu")
    assert clf.kind == "classifier" and clf.class_names == ["neg", "pos"] and clf.num_classes == 2
    assert load_hf(d / "t", max_length=16).max_length == 16
    assert lm.describe()["checksum"] == lm.checksum and lm.checksum.startswith("sha256:")


def test_checksum_follows_the_weights(tmp_path):
    a, b = tiny_lm(tmp_path / "a", seed=0), tiny_lm(tmp_path / "b", seed=3)
    shutil.copytree(a, tmp_path / "a2")
    assert load_hf(a).checksum == load_hf(tmp_path / "a2").checksum != load_hf(b).checksum


def test_bin_weights_load_weights_only_and_match_safetensors(tmp_path):
    src = text_assets() / "t"
    ref = load_hf(src)
    dst = tmp_path / "bin"
    shutil.copytree(src, dst)
    (dst / "model.safetensors").unlink()
    torch.save(ref.model.state_dict(), dst / "pytorch_model.bin")
    m = load_hf(dst)
    assert torch.allclose(_logits(m), _logits(ref), atol=1e-5)


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_bin_weights_with_pickled_code_are_refused(tmp_path, capsys):
    dst = tmp_path / "evil"
    shutil.copytree(text_assets() / "t", dst)
    (dst / "model.safetensors").unlink()
    torch.save({"transformer.wte.weight": torch.zeros(2, 2), "x": _Evil()}, dst / "pytorch_model.bin")
    with pytest.raises(KdataError, match="pytorch_model.bin") as exc:
        load_hf(dst)
    assert "\n" not in str(exc.value) and "print" in str(exc.value) and "refused" in str(exc.value)
    assert "must never run" not in capsys.readouterr().out


def test_directory_without_weights_or_config_is_one_line(tmp_path):
    d = tmp_path / "now"
    shutil.copytree(text_assets() / "t", d)
    (d / "model.safetensors").unlink()
    with pytest.raises(KdataError, match="no model weights"):
        load_model(f"hf:{d}")
    (d / "config.json").unlink()
    with pytest.raises(KdataError, match="no config.json"):
        load_model(f"hf:{d}")
    with pytest.raises(KdataError, match="not found"):
        load_model(f"hf:{tmp_path / 'missing'}")


def test_directory_without_tokenizer_files_is_one_line_at_load(tmp_path):
    # config.json + weights only: transformers builds GPT2Tokenizer with one entry; every text would be 0 tokens
    d = tmp_path / "notok"
    d.mkdir()
    for f in ("config.json", "model.safetensors"):
        shutil.copy(text_assets() / "t" / f, d / f)
    for spec in (f"hf:{d}", f"hf:{d}/"):
        with pytest.raises(KdataError, match="no tokenizer \\(tokenizer.json / vocab files\\) found") as exc:
            load_model(spec)
        assert str(d) in str(exc.value) and "\n" not in str(exc.value)
    # a tokenizer_config.json naming a slow class whose vocab files are absent: refused alike
    (d / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "BertTokenizer"}))
    with pytest.raises(KdataError, match="no tokenizer"):
        load_hf(d)
    # the tokenizer files back: it loads and tokenises
    (d / "tokenizer_config.json").unlink()
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (text_assets() / "t" / f).exists():
            shutil.copy(text_assets() / "t" / f, d / f)
    m = load_hf(d)
    assert len(m.tokenizer("hello")["input_ids"]) == 5 and m.vocab_size > 256


def test_custom_code_is_refused_without_trust_remote_code(tmp_path):
    d = tmp_path / "remote"
    shutil.copytree(text_assets() / "t", d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilLM"}
    (d / "config.json").write_text(json.dumps(cfg))
    (d / "modeling_evil.py").write_text("raise SystemExit('imported')\n")
    with pytest.raises(KdataError, match="--trust-remote-code") as exc:
        load_model(f"hf:{d}")
    assert "\n" not in str(exc.value)


def test_unknown_architecture_is_one_line(tmp_path):
    d = tmp_path / "odd"
    shutil.copytree(text_assets() / "t", d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["architectures"] = ["GPT2Model"]
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(KdataError, match="ForCausalLM"):
        load_model(f"hf:{d}")


def test_same_tokenizer_compares_vocabularies():
    d = text_assets()
    t, s, r = (load_hf(d / x) for x in "tsr")
    assert same_tokenizer(t, s) and not same_tokenizer(t, r)


def test_missing_text_extra_names_the_install():
    with pytest.raises(KdataError, match=r"pip install 'kdata\[text\]'"):
        require("text", "transformers", "kdata_no_such_module")


def test_select_and_generate_refuse_a_model_without_tokenizer_files(tmp_path, capsys):
    """Teacher or student without tokenizer files: exit 2 and one line at load, not a run of 0-token rows."""
    from kdata.cli import main
    from tests.helpers.text_models import write_jsonl

    d = text_assets()
    notok = tmp_path / "notok"
    notok.mkdir()
    for f in ("config.json", "model.safetensors"):
        shutil.copy(d / "t" / f, notok / f)
    pool = write_jsonl(tmp_path / "pool.jsonl", n=6)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"id": "p0", "prompt": "the cat"}\n')
    capsys.readouterr()
    runs = [["select", "--pool", str(pool), "--teacher", f"hf:{notok}", "--student", f"hf:{d / 's'}"],
            ["select", "--pool", str(pool), "--teacher", f"hf:{d / 't'}", "--student", f"hf:{notok}"],
            ["generate", "--teacher", f"hf:{notok}", "--prompts", str(prompts), "--max-new-tokens", "2"]]
    for i, args in enumerate(runs):
        out = tmp_path / f"out{i}"
        code = main([*args, "--out", str(out)] + (["--method", "random", "--budget", "2"] if i < 2 else []))
        err = capsys.readouterr().err.strip()
        assert code == 2 and not out.exists(), err
        assert err == (f"kdata: error: {notok}: no tokenizer (tokenizer.json / vocab files) found (without them "
                       "transformers builds one of 1 special token(s)); save the tokenizer there with save_pretrained")
