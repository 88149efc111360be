"""builtin:text-teacher / -student / -reference: tiny GPT-2 LMs trained on first use and cached."""

from __future__ import annotations

import os

import pytest
import torch

from kdata.core.errors import KdataError
from kdata.models import builtin_text
from kdata.pools.builtin_text import text_test
from kdata.models.text_tokens import encode_texts
from kdata.training.text_losses import perplexity


@pytest.fixture(scope="module")
def dirs():
    return {n: builtin_text.model_dir(f"builtin:{n}") for n in builtin_text.SPECS}


def test_model_dir_trains_once_and_caches(dirs):
    teacher = dirs["text-teacher"]
    stamp = os.stat(teacher / "model.safetensors").st_mtime_ns
    assert builtin_text.model_dir("text-teacher") == teacher  # bare names work too
    assert os.stat(teacher / "model.safetensors").st_mtime_ns == stamp  # not retrained
    assert (teacher / "_SUCCESS").exists() and not list(teacher.parent.glob(f".{teacher.name}-*"))
    for path in dirs.values():
        assert (path / "config.json").exists() and (path / "tokenizer.json").exists()
        assert not list(path.glob("*.bin"))  # safetensors only
    with pytest.raises(KdataError, match="unknown built-in text model"):
        builtin_text.model_dir("builtin:text-giant")


def test_models_load_share_a_tokenizer_and_the_teacher_is_best(dirs):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    toks = {n: AutoTokenizer.from_pretrained(str(p)) for n, p in dirs.items()}
    vocab = toks["text-teacher"].get_vocab()
    assert all(t.get_vocab() == vocab for t in toks.values()) and len(vocab) == builtin_text.VOCAB_SIZE
    texts = text_test().column("text").to_pylist()[::3]
    seqs = encode_texts(toks["text-teacher"], texts, max_length=builtin_text.N_POSITIONS)
    ppl, sizes = {}, {}
    for n, p in dirs.items():
        model = AutoModelForCausalLM.from_pretrained(str(p))
        assert model.config.architectures == ["GPT2LMHeadModel"]
        sizes[n] = sum(x.numel() for x in model.parameters())
        with torch.inference_mode():
            ppl[n] = perplexity(model, seqs, pad_id=toks[n].pad_token_id)
    assert sizes["text-teacher"] > sizes["text-reference"] > sizes["text-student"]
    assert ppl["text-teacher"] < 0.8 * ppl["text-student"]
    assert ppl["text-teacher"] < ppl["text-reference"]
    assert ppl["text-student"] < builtin_text.VOCAB_SIZE  # trained: better than uniform


def test_hf_loading_accepts_the_builtin_names(dirs):
    from kdata.models.hf import load_text_model

    m = load_text_model("builtin:text-student")
    assert m.kind == "causal_lm" and m.vocab_size == builtin_text.VOCAB_SIZE
