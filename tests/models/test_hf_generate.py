"""Batched sampling from a real (tiny, randomly initialised) GPT-2: reproducible, independent of the batch."""

from __future__ import annotations

import pytest
import torch

from kdata.core.errors import KdataError
from kdata.models.hf import load_hf
from kdata.models.hf_generate import DecodeConfig, candidate_seed, draw, sample
from tests.helpers.text_models import tiny_lm

PROMPTS = [("a", "the cat sat"), ("b", "import os"), ("c", ""), ("d", "Return the sum of two numbers and")]


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    return load_hf(tiny_lm(tmp_path_factory.mktemp("genlm") / "lm", seed=3), device="cpu")


def _tokens(results) -> dict:
    return {(r["prompt_id"], r["j"]): r["token_ids"] for r in results}


def test_same_seed_same_candidates_and_another_seed_differs(lm):
    cfg = DecodeConfig(max_new_tokens=12, seed=5)
    a = sample(lm, PROMPTS, per_prompt=3, config=cfg, batch_size=4)
    b = sample(lm, PROMPTS, per_prompt=3, config=cfg, batch_size=4)
    c = sample(lm, PROMPTS, per_prompt=3, config=DecodeConfig(max_new_tokens=12, seed=6), batch_size=4)
    assert _tokens(a) == _tokens(b)
    assert _tokens(a) != _tokens(c)
    assert [(r["prompt_id"], r["j"]) for r in a] == [(p, j) for p, _ in PROMPTS for j in range(3)]
    assert len({tuple(r["token_ids"]) for r in a}) > 6  # the K candidates of a prompt differ


def test_independent_of_batch_size_and_batch_neighbours(lm):
    cfg = DecodeConfig(max_new_tokens=10, seed=1, temperature=1.3, top_p=0.9)
    ref = _tokens(sample(lm, PROMPTS, per_prompt=2, config=cfg, batch_size=1))
    for bs in (3, 8):
        assert _tokens(sample(lm, PROMPTS, per_prompt=2, config=cfg, batch_size=bs)) == ref
    alone = _tokens(sample(lm, PROMPTS[3:], per_prompt=2, config=cfg, batch_size=8))
    assert alone == {k: v for k, v in ref.items() if k[0] == "d"}


def test_logprobs_are_the_models_own_under_left_padding(lm):
    """The recorded log-probs equal a plain forward pass over prompt + generated tokens (cache, positions, padding)."""
    cfg = DecodeConfig(max_new_tokens=8, seed=2)
    out = sample(lm, PROMPTS, per_prompt=1, config=cfg, batch_size=4)
    for r, (_, prompt) in zip(out, PROMPTS):
        ids = lm.tokenizer.encode(prompt, add_special_tokens=False) or [lm.tokenizer.eos_token_id]
        full = torch.tensor([ids + r["token_ids"]])
        with torch.no_grad():
            logp = torch.log_softmax(lm.model(full).logits[0].float(), -1)
        want = [logp[len(ids) - 1 + t, tok].item() for t, tok in enumerate(r["token_ids"])]
        assert r["token_logprobs"] == pytest.approx(want, abs=1e-4)
        assert r["finish"] in ("eos", "length") and (r["finish"] == "eos" or len(r["token_ids"]) == 8)


def test_draw_is_inverse_cdf_over_the_nucleus():
    logits = torch.log(torch.tensor([[0.1, 0.5, 0.15, 0.25]]))
    pick = [draw(logits, torch.tensor([u]), temperature=1.0, top_p=1.0).item() for u in (0.0, 0.49, 0.51, 0.76, 0.99)]
    assert pick == [1, 1, 3, 2, 0]  # sorted: 1 (0.5), 3 (0.25), 2 (0.15), 0 (0.1)
    # top-p 0.7: the nucleus is {1, 3} (0.5 + 0.25 ≥ 0.7); u scales over its mass only
    nucleus = {draw(logits, torch.tensor([u]), temperature=1.0, top_p=0.7).item() for u in torch.linspace(0, 0.999, 50)}
    assert nucleus == {1, 3}
    assert draw(logits, torch.tensor([0.99]), temperature=1.0, top_p=0.01).item() == 1  # greedy


def test_candidate_seed_depends_on_prompt_and_index_only():
    assert candidate_seed(0, "a", 1) == candidate_seed(0, "a", 1)
    assert len({candidate_seed(0, "a", 0), candidate_seed(0, "a", 1), candidate_seed(0, "b", 0),
                candidate_seed(1, "a", 0)}) == 4


def test_bad_settings_are_one_line(lm):
    with pytest.raises(KdataError, match="--max-new-tokens 500"):
        sample(lm, PROMPTS, per_prompt=1, config=DecodeConfig(max_new_tokens=500))
    with pytest.raises(KdataError, match="--top-p"):
        sample(lm, PROMPTS, per_prompt=1, config=DecodeConfig(top_p=0.0))
    with pytest.raises(KdataError, match="--temperature"):
        sample(lm, PROMPTS, per_prompt=1, config=DecodeConfig(temperature=0.0))
