"""Losses of the text trainer and the held-out measures (perplexity, accuracy).

**Causal LM, offline top-k distillation.** A shard stores, for each next-token position t, the
teacher's k most likely tokens with their log-probs and the leftover mass r_t = 1 − Σ p_i (caching
only the top-k biases the target unless the rest is kept: Anshumann et al., "Sparse Logit Sampling: Accelerating Knowledge Distillation in LLMs", ACL 2025, arXiv 2503.16870). The
teacher's distribution is the k + 1 buckets (p_1..p_k, r_t); the student's, on the same buckets,
is its probabilities q_i of the same k ids and the rest 1 − Σ q_i (a log-sum-exp over the other
ids, computed stably). The loss per position is

    α · KL(teacher buckets ‖ student buckets) + (1 − α) · CE(student, next token),

averaged over the real positions of the batch (padding excluded).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from kdata.core.errors import KdataError
from kdata.models.text_tokens import encode_texts
from kdata.scoring.text_batches import pad


def bucket_kl(logits: torch.Tensor, batch: dict) -> torch.Tensor:
    """Mean KL over valid positions between the stored teacher top-k + rest and the student (see module doc).

    ``logits`` (B, L, V) of the student on ``batch["input_ids"]``; position t predicts token t + 1."""
    logq = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # (B, L−1, V)
    ids = batch["topk_ids"]
    lq_top = logq.gather(-1, ids)  # (B, L−1, k)
    lq_rest = torch.logsumexp(logq.scatter(-1, ids, float("-inf")), dim=-1).clamp_min(-1e4)  # student's rest
    p_top = batch["topk_logprobs"].float().exp()
    rest = batch["rest_mass"].float().clamp_min(0.0)
    total = (p_top.sum(-1) + rest).clamp_min(1e-6)  # float16 storage: renormalise to exactly 1
    p_top, rest = p_top / total[..., None], rest / total
    lp_top = p_top.clamp_min(1e-12).log()
    kl = (p_top * (lp_top - lq_top)).sum(-1) + rest * (rest.clamp_min(1e-12).log() - lq_rest)
    valid = batch["valid"]
    return (kl * valid).sum() / valid.sum().clamp_min(1)


def next_token_ce(logits: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of the next token over real (unpadded) positions."""
    target = input_ids[:, 1:]
    keep = mask[:, 1:].bool()
    ce = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="none")
    return (ce.view_as(target) * keep).sum() / keep.sum().clamp_min(1)


def lm_distill_loss(logits: torch.Tensor, batch: dict, *, alpha: float) -> tuple[torch.Tensor, float, float]:
    """α · bucket KL + (1 − α) · CE; returns the loss and the two terms (floats, for the log)."""
    kl = bucket_kl(logits, batch)
    ce = next_token_ce(logits, batch["input_ids"], batch["attention_mask"])
    return alpha * kl + (1 - alpha) * ce, kl.item(), ce.item()


def perplexity(model, seqs: list[list[int]], *, pad_id: int, batch_size: int = 32) -> float:
    """exp(total next-token NLL / tokens predicted) over ``seqs`` (token ids), sorted by length so
    batches pad little; the same number whatever the batch size."""
    device = next(model.parameters()).device
    was = model.training
    model.eval()
    total, count = 0.0, 0
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    with torch.inference_mode():
        for i in range(0, len(order), batch_size):
            chunk = [seqs[j] for j in order[i:i + batch_size] if len(seqs[j]) > 1]
            if not chunk:
                continue
            ids, mask = pad(chunk, pad_id=pad_id, device=device, min_width=1)
            logits = model(input_ids=ids, attention_mask=mask).logits
            ce = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1),
                                 reduction="none").view(ids.shape[0], -1)
            keep = mask[:, 1:].bool()
            total += float((ce * keep).sum())
            count += int(keep.sum())
    model.train(was)
    if not count:  # NaN would reach train_log.json (kdata writes no NaN into JSON)
        raise KdataError("evaluation set: no text is two tokens or longer once tokenised, so there is nothing "
                         "to predict; give an eval set of real sentences")
    return math.exp(total / count)


def accuracy(model, tokenizer, texts: list[str], labels: list[int], *, max_length: int, pad_id: int,
             batch_size: int = 64) -> float:
    """Share of ``texts`` whose argmax class is ``labels`` (a sequence classifier)."""
    device = next(model.parameters()).device
    was = model.training
    model.eval()
    correct = 0
    with torch.inference_mode():
        for i in range(0, len(texts), batch_size):
            ids, mask = pad(encode_texts(tokenizer, texts[i:i + batch_size], max_length=max_length) or [[pad_id]],
                            pad_id=pad_id, device=device, min_width=1)
            pred = model(input_ids=ids, attention_mask=mask).logits.float().argmax(-1).cpu()
            correct += int((pred == torch.tensor(labels[i:i + batch_size])).sum())
    model.train(was)
    return correct / max(1, len(texts))
