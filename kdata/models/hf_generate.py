"""Sample continuations from a causal LM (``hf:PATH`` / ``builtin:text-*``), batched, reproducibly.

Symbolic Knowledge Distillation (West et al., arXiv 2110.07178) has the teacher write a corpus by
sampling many continuations per prompt; this module is that sampler. Decoding: temperature, then
nucleus (top-p) filtering (Holtzman et al., arXiv 1904.09751), then one draw per step.

**Reproducible and independent of batch composition.** Every candidate ``(prompt_id, j)`` owns a
``torch.Generator`` seeded from ``sha256(seed, prompt_id, j)``; each step draws one uniform number
u from it and picks the token by inverse CDF over the filtered distribution sorted by
probability (ties by token id). A candidate's tokens therefore depend only on its own seed and on
its own logits, never on which other rows share its batch, the batch size or the device's RNG.
Rows are left-padded with an attention mask and explicit position ids, so a row's logits are the
same computation whatever its neighbours (up to floating-point reassociation in batched matmuls,
far below the gap a draw would need to land on to flip).

Each candidate comes back with its generated token ids, the teacher's log-probability of each
(at temperature 1: the model's own distribution, what scoring stores) and why it stopped
(``eos`` or ``length``). Prompts longer than the context minus ``max_new_tokens`` keep their last
tokens (``prompt_truncated``).
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from kdata.core.errors import KdataError
from kdata.models.decoding import DecodeConfig, check_decode  # noqa: F401  (re-exported)


def candidate_seed(seed: int, prompt_id: str, j: int) -> int:
    """The seed of candidate j of a prompt: a hash of (seed, prompt id, j), so it is the same in any batch."""
    h = hashlib.sha256(f"{seed}\0{prompt_id}\0{j}".encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def prompt_ids(model, prompt: str, *, max_new_tokens: int) -> tuple[list[int], bool]:
    """Token ids of a prompt, tokenised as scoring does (special tokens as the tokenizer adds them by
    default, e.g. a leading BOS: ``kdata.models.text_tokens.encode_texts``), and whether it was cut.
    A too-long prompt keeps its leading special tokens and its last text tokens; an empty one is the
    tokenizer's BOS (else EOS, else pad) alone."""
    from kdata.models.text_tokens import encode_texts

    limit = model.max_length - max_new_tokens
    if limit < 1:
        raise KdataError(f"--max-new-tokens {max_new_tokens}: the model {model.spec} has a context of "
                         f"{model.max_length} tokens; leave room for the prompt")
    tok = model.tokenizer
    ids = encode_texts(tok, [prompt], max_length=10**9)[0] if prompt else []
    if not ids:
        ids = [next(v for v in (tok.bos_token_id, tok.eos_token_id, model.pad_id) if v is not None)]
    if len(ids) <= limit:
        return ids, False
    special = set(getattr(tok, "all_special_ids", None) or ())
    head = 0
    while head < len(ids) - 1 and head < limit - 1 and ids[head] in special:
        head += 1  # a leading BOS (or other special prefix) stays in front of the kept tail
    return ids[:head] + ids[len(ids) - (limit - head):], True


def draw(logits: torch.Tensor, u: torch.Tensor, *, temperature: float, top_p: float) -> torch.Tensor:
    """Tokens by inverse CDF of the temperature-scaled, top-p-filtered distribution, one uniform per row."""
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    # sort by probability, ties by token id (a stable sort of the ids by descending probability)
    sp, si = torch.sort(probs, dim=-1, descending=True, stable=True)
    cum = torch.cumsum(sp, dim=-1)
    keep = (cum - sp) < top_p  # the smallest prefix whose mass reaches top_p (always ≥ 1 token)
    sp = sp * keep
    cdf = torch.cumsum(sp, dim=-1)
    target = (u.to(cdf.dtype) * cdf[:, -1]).unsqueeze(1)
    pos = torch.searchsorted(cdf, target, right=True).clamp_(max=sp.shape[1] - 1)
    pos = torch.minimum(pos.squeeze(1), keep.sum(1) - 1)
    return si.gather(1, pos.unsqueeze(1)).squeeze(1)


def _left_pad(seqs: list[list[int]], pad: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s):] = torch.tensor(s, dtype=torch.long)
        mask[i, width - len(s):] = 1
    return ids.to(device), mask.to(device)


def _forward_args(module) -> tuple[str, dict]:
    """The KV-cache keyword of this transformers version (``cache`` in 5.x, ``past_key_values`` before)
    and ``logits_to_keep=1`` where supported (only the last position's logits are needed)."""
    import inspect

    params = inspect.signature(module.forward).parameters
    return ("cache" if "cache" in params else "past_key_values"), (
        {"logits_to_keep": 1} if "logits_to_keep" in params else {})


@torch.inference_mode()
def _sample_batch(model, seqs: list[list[int]], seeds: list[int], cfg: DecodeConfig) -> list[dict]:
    """Sample one continuation per row (see the module doc); returns tokens, log-probs, finish reason."""
    device = model.device
    eos = model.tokenizer.eos_token_id
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    ids, mask = _left_pad(seqs, model.pad_id, device)
    pos = (mask.cumsum(1) - 1).clamp_(min=0)
    n = len(seqs)
    out_tok = [[] for _ in range(n)]
    out_lp = [[] for _ in range(n)]
    done = np.zeros(n, dtype=bool)
    finish = ["length"] * n
    cache_arg, extra = _forward_args(model.model)
    past, step_ids, step_pos = None, ids, pos
    for _ in range(cfg.max_new_tokens):
        res = model.model(input_ids=step_ids, attention_mask=mask, position_ids=step_pos, use_cache=True,
                          **{cache_arg: past}, **extra)
        past = getattr(res, cache_arg)
        logits = res.logits[:, -1, :].float()
        u = torch.cat([torch.rand(1, generator=g) for g in gens]).to(device)
        tok = draw(logits, u, temperature=cfg.temperature, top_p=cfg.top_p)
        lp = torch.log_softmax(logits, dim=-1).gather(1, tok.unsqueeze(1)).squeeze(1)
        tok_l, lp_l = tok.tolist(), lp.tolist()
        for i in range(n):
            if done[i]:
                continue
            if eos is not None and tok_l[i] == eos:
                done[i], finish[i] = True, "eos"
                continue
            out_tok[i].append(tok_l[i])
            out_lp[i].append(lp_l[i])
        if done.all():
            break
        step_ids = tok.unsqueeze(1)
        step_pos = step_pos[:, -1:] + 1
        mask = torch.cat([mask, torch.ones((n, 1), dtype=mask.dtype, device=device)], dim=1)
    return [{"token_ids": out_tok[i], "token_logprobs": out_lp[i], "finish": finish[i]} for i in range(n)]


def sample(model, prompts: list[tuple[str, str]], *, per_prompt: int, config: DecodeConfig,
           batch_size: int = 16) -> list[dict]:
    """``per_prompt`` continuations of each ``(prompt_id, prompt)``, in prompt order then j.

    Each result: ``prompt_id``, ``j``, ``text`` (decoded, special tokens dropped), ``token_ids``,
    ``token_logprobs`` (teacher, temperature 1), ``finish`` (``eos``/``length``), ``prompt_truncated``.
    """
    if getattr(model, "kind", None) != "causal_lm":
        raise KdataError(f"{getattr(model, 'spec', model)}: generation needs a causal LM (…ForCausalLM)")
    check_decode(config)
    if batch_size < 1:
        raise KdataError(f"--batch-size {batch_size}: must be ≥ 1")
    jobs = []
    for pid, text in prompts:
        ids, cut = prompt_ids(model, text, max_new_tokens=config.max_new_tokens)
        jobs.extend((pid, j, ids, cut) for j in range(per_prompt))
    order = sorted(range(len(jobs)), key=lambda k: len(jobs[k][2]))  # similar lengths share a batch: less padding
    results: list[dict | None] = [None] * len(jobs)
    for b in range(0, len(order), batch_size):
        part = order[b:b + batch_size]
        outs = _sample_batch(model, [jobs[k][2] for k in part],
                             [candidate_seed(config.seed, jobs[k][0], jobs[k][1]) for k in part], config)
        for k, o in zip(part, outs):
            pid, j, _, cut = jobs[k]
            text = model.tokenizer.decode(o["token_ids"], skip_special_tokens=True)
            results[k] = {"prompt_id": pid, "j": j, "text": text, "prompt_truncated": cut, **o}
    return results  # type: ignore[return-value]
