"""An open_clip model config ``.json`` cannot make kdata run a tokenizer directory's Python or reach
the Hub: its ``text_cfg`` (``hf_tokenizer_name``, ``hf_model_name``, ``tokenizer_kwargs``) is checked
when the config is read, and the tokenizer loads offline under the load guard.

Real files throughout: a tiny open_clip config and its safetensors weights, a saved transformers
tokenizer whose ``tokenizer_config.json`` maps ``AutoTokenizer`` to a ``.py`` file that writes a
marker when imported. The first test shows the payload does run under bare open_clip.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

pytest.importorskip("open_clip")
pytest.importorskip("transformers")

from kdata.cli import main  # noqa: E402
from kdata.core.errors import KdataError  # noqa: E402
from kdata.models.sidecar import pool_class_names  # noqa: E402
from kdata.models.spec import load_model  # noqa: E402
from tests.helpers.real_inputs import TINY_CLIP, make_image_folder, tiny_clip  # noqa: E402
from tests.helpers.text_models import byte_tokenizer  # noqa: E402

# open_clip dims for a byte tokenizer (257 ids): same shapes with or without the hf_* fields
BASE = {"embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
        "text_cfg": {"context_length": 16, "vocab_size": 300, "width": 32, "heads": 2, "layers": 1}}
PAYLOAD = textwrap.dedent("""
    open(__import__("os").environ["KDATA_TEST_MARKER"], "a").write("ran\\n")
    from transformers import PreTrainedTokenizerFast
    class EvilTokenizer(PreTrainedTokenizerFast):
        pass
""")
NAMES = ["cat", "dog", "sea_turtle"]


@pytest.fixture()
def files(tmp_path, monkeypatch):
    """{weights, good_tok, evil_tok, marker, pool} under tmp_path; transformers' module cache there too."""
    import open_clip
    from safetensors.torch import save_file
    from transformers import dynamic_module_utils

    modules = tmp_path / "hf-modules"
    monkeypatch.setattr(dynamic_module_utils, "HF_MODULES_CACHE", str(modules))  # never ~/.cache
    monkeypatch.setenv("KDATA_TEST_MARKER", str(tmp_path / "PWNED"))
    base = _write_config(tmp_path / "kdata-cfgsafety-base.json", {})
    open_clip.add_model_config(str(base))
    torch.manual_seed(0)
    model = open_clip.create_model("kdata-cfgsafety-base", pretrained=None)
    weights = tmp_path / "base.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    good, evil = tmp_path / "good_tok", tmp_path / "evil_tok"
    byte_tokenizer().save_pretrained(str(good))
    byte_tokenizer().save_pretrained(str(evil))
    tc = json.loads((evil / "tokenizer_config.json").read_text())
    tc["auto_map"] = {"AutoTokenizer": ["tokenization_evil.EvilTokenizer", "tokenization_evil.EvilTokenizer"]}
    (evil / "tokenizer_config.json").write_text(json.dumps(tc))
    (evil / "tokenization_evil.py").write_text(PAYLOAD)
    return {"weights": weights, "good_tok": good, "evil_tok": evil, "marker": tmp_path / "PWNED",
            "modules": modules, "pool": make_image_folder(tmp_path / "pool", n=8), "root": tmp_path}


def _write_config(path, text_extra: dict):
    cfg = json.loads(json.dumps(BASE))
    cfg["text_cfg"].update(text_extra)
    path.write_text(json.dumps(cfg))
    return path


def _select(files, spec: str) -> int:
    return main(["select", "--pool", str(files["pool"]), "--teacher", spec, "--student", spec, "--method", "kd3",
                 "--budget", "4", "--workers", "0", "--device", "cpu", "--out", str(files["root"] / "out"), "--quiet"])


def test_bare_open_clip_runs_the_payload(files):
    """The attack is real: open_clip.get_tokenizer on such a config imports the directory's .py."""
    cfg = _write_config(files["root"] / "kdata-cfgsafety-bare.json",
                        {"hf_tokenizer_name": str(files["evil_tok"]), "tokenizer_kwargs": {"trust_remote_code": True}})
    code = ("import open_clip, sys; open_clip.add_model_config(sys.argv[1]); "
            "open_clip.get_tokenizer('kdata-cfgsafety-bare')")
    env = {**os.environ, "HF_MODULES_CACHE": str(files["modules"]), "HF_HUB_OFFLINE": "1"}
    subprocess.run([sys.executable, "-c", code, str(cfg)], env=env, check=True, capture_output=True, timeout=300)
    assert files["marker"].read_text() == "ran\n"


@pytest.mark.parametrize("extra, field", [
    ({"hf_tokenizer_name": "EVIL", "tokenizer_kwargs": {"trust_remote_code": True}},
     "text_cfg.tokenizer_kwargs.trust_remote_code"),
    ({"hf_tokenizer_name": "EVIL"}, "text_cfg.hf_tokenizer_name"),
    ({"hf_model_name": "EVIL"}, "text_cfg.hf_model_name"),
    ({"hf_tokenizer_name": "attacker/evil-tokenizer", "tokenizer_kwargs": {}}, "text_cfg.hf_tokenizer_name"),
    ({"tokenizer_kwargs": {"bpe_path": "/etc/passwd"}}, "text_cfg.tokenizer_kwargs.bpe_path"),
    ({"hf_tokenizer_name": "GOOD", "tokenizer_kwargs": {"revision": "main"}}, "text_cfg.tokenizer_kwargs.revision"),
])
def test_cli_refuses_the_config_in_one_line(files, capsys, extra, field):
    """Exit 2, one stderr line naming the .json and the field; the payload never runs, nothing is cached."""
    for key in ("hf_tokenizer_name", "hf_model_name"):
        if key in extra:
            extra[key] = {"EVIL": str(files["evil_tok"]), "GOOD": str(files["good_tok"])}.get(extra[key], extra[key])
    cfg = _write_config(files["root"] / "kdata-cfgsafety-evil.json", extra)
    code = _select(files, f"open_clip:{cfg}:{files['weights']}")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"kdata: error: {cfg}: field '{field}'"), err
    assert not files["marker"].exists() and not files["modules"].exists()
    assert not (files["root"] / "out").exists()


def test_auto_map_is_refused_by_load_model_too(files):
    """The check sits in the loader, so every command (and the embedder) gets it."""
    cfg = _write_config(files["root"] / "kdata-cfgsafety-evil2.json", {"hf_tokenizer_name": str(files["evil_tok"])})
    with pytest.raises(KdataError, match=r"field 'text_cfg.hf_tokenizer_name' .*tokenizer_config.json .*auto_map"):
        with pool_class_names(NAMES):
            load_model(f"open_clip:{cfg}:{files['weights']}")
    assert not files["marker"].exists()


def test_local_hf_tokenizer_and_plain_options_still_load(files):
    """A local tokenizer directory without auto_map, and allowed tokenizer_kwargs, load as before."""
    cfg = _write_config(files["root"] / "kdata-cfgsafety-good.json",
                        {"hf_tokenizer_name": str(files["good_tok"]), "tokenizer_kwargs": {"clean": "whitespace"}})
    with pool_class_names(NAMES):
        m = load_model(f"open_clip:{cfg}:{files['weights']}")
    with torch.inference_mode():
        logits, feats = m.forward(torch.zeros(2, 3, 32, 32))
    assert logits.shape == (2, 3) and feats.shape == (2, 16)
    plain, ckpt = tiny_clip()  # no hf tokenizer: open_clip's own, with a plain option added
    opts = _write_config(files["root"] / "kdata-cfgsafety-plain.json", {})
    opts.write_text(json.dumps({**TINY_CLIP, "text_cfg": {**TINY_CLIP["text_cfg"],
                                                          "tokenizer_kwargs": {"clean": "lower"}}}))
    for spec in (f"open_clip:{plain}:{ckpt}", f"open_clip:{opts}:{ckpt}"):
        with pool_class_names(NAMES):
            assert load_model(spec).class_names == NAMES
