"""Causal-LM scoring across tokenizers: a student or reference that tokenises unlike the teacher gets
its NLL per UTF-8 byte in the teacher's units (so MiniPLM's reference_nll − teacher_nll compares like
with like), the pool info says which tokenizers are shared, and the stored top-k is capped at the vocabulary."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from kdata.models.hf import load_hf  # noqa: E402
from kdata.pools.spec import open_pool  # noqa: E402
from kdata.pools.text import text_table  # noqa: E402
from kdata.scoring.text import TextScoreConfig, score_text_pool, score_text_table, text_models  # noqa: E402
from tests.helpers.text_models import EOS, text_assets  # noqa: E402

MERGES = [("t", "h"), ("th", "e"), ("Ġ", "the"), ("a", "t"), ("Ġ", "c"), ("Ġc", "at"), ("Ġ", "s"), ("Ġs", "at"),
          ("o", "n"), ("Ġ", "on"), ("Ġ", "m"), ("Ġm", "at")]


def merges_lm(path, *, seed: int = 3):
    """A tiny GPT-2 whose byte-level BPE has merges (``the``, `` cat``, …): fewer tokens than bytes."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    for a, b in MERGES:
        vocab[a + b] = len(vocab)
    vocab[EOS] = len(vocab)
    tk = Tokenizer(models.BPE(vocab=vocab, merges=MERGES, unk_token=None))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tk.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token=EOS, bos_token=EOS, pad_token=EOS,
                                  model_max_length=1024)
    torch.manual_seed(seed)
    cfg = GPT2Config(n_layer=1, n_head=2, n_embd=32, vocab_size=len(tok), n_positions=128,
                     bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id)
    model = GPT2LMHeadModel(cfg)
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = text_assets()
    return load_hf(d / "t"), load_hf(d / "s"), load_hf(merges_lm(tmp_path_factory.mktemp("bpe") / "m"))


TEXTS = ["the cat sat on the mat", "the cat sat on the mat the cat sat on the mat", "a dog ran in the park"]


def _own_sum(model, text):
    ids = torch.tensor([model.tokenizer(text)["input_ids"]])
    with torch.inference_mode():
        logp = torch.log_softmax(model.model(input_ids=ids).logits[0, :-1].float(), -1)
    return -logp.gather(1, ids[0, 1:, None]).sum().item(), ids.shape[1]


def test_other_tokenizer_nll_is_per_byte_in_teacher_units(models):
    t, s, m = models
    assert m.tokenizer("the cat")["input_ids"] != t.tokenizer("the cat")["input_ids"]
    table = text_table([f"x{i}" for i in range(len(TEXTS))], TEXTS, errors=[None] * len(TEXTS), source="t")
    rows = score_text_table(table, text_models(t, s, m))[0].to_pylist()
    for text, row in zip(TEXTS, rows):
        own_sum, own_len = _own_sum(m, text)
        first = m.tokenizer.convert_ids_to_tokens(m.tokenizer(text)["input_ids"][0])
        own_bytes = len(text.encode()) - len(first)  # ASCII: one byte per ByteLevel symbol
        t_bytes = len(text.encode()) - 1  # the byte tokenizer predicts every byte after the first
        assert own_len - 1 < t_bytes  # the merges make fewer tokens than bytes
        assert row["reference_nll_sum"] == pytest.approx(own_sum / own_bytes * t_bytes, rel=1e-4)
        assert row["reference_nll"] == pytest.approx(row["reference_nll_sum"] / (row["n_tokens"] - 1), rel=1e-5)
        assert row["reference_nll"] != pytest.approx(own_sum / (own_len - 1), rel=1e-2)  # not per own token
    # a student with the merges tokenizer: the same per-byte rule, kl_ts null
    rows = score_text_table(table, text_models(t, m))[0].to_pylist()
    own_sum, _ = _own_sum(m, TEXTS[0])
    assert rows[0]["kl_ts"] is None
    assert rows[0]["student_nll"] == pytest.approx(own_sum / (len(TEXTS[0]) - 3) * (len(TEXTS[0]) - 1)
                                                   / (rows[0]["n_tokens"] - 1), rel=1e-4)


def test_same_tokenizer_keeps_per_token_means(models):
    t, s, _ = models
    table = text_table(["a"], [TEXTS[0]], errors=[None], source="t")
    row = score_text_table(table, text_models(t, s, s))[0].to_pylist()[0]
    own_sum, own_len = _own_sum(s, TEXTS[0])
    assert row["reference_nll"] == pytest.approx(own_sum / (own_len - 1), rel=1e-4) == row["student_nll"]


def test_pool_info_records_the_reference_tokenizer_and_the_stored_topk(models, tmp_path, monkeypatch):
    monkeypatch.setenv("KDATA_CACHE", str(tmp_path / "cache"))
    t, s, m = models
    pool = open_pool(str(text_assets() / "pool.jsonl"))
    scores, _, info = score_text_pool(pool, text_models(t, s, m), config=TextScoreConfig(token_topk=1000))
    assert info["reference_tokenizer_shared"] is False and info["tokenizer_shared"] is True
    width = {len(p) for row in scores.column("teacher_topk_ids").to_pylist() for p in row}
    assert width == {t.vocab_size} and info["token_topk"] == t.vocab_size < 1000
    _, _, info = score_text_pool(pool, text_models(t, s, s), config=TextScoreConfig(token_topk=4))
    assert info["reference_tokenizer_shared"] is True and info["token_topk"] == 4
    assert "reference_tokenizer_shared" not in score_text_pool(pool, text_models(t, s))[2]
    assert np.isfinite(scores.column("reference_nll").to_numpy()).all()
