"""Per-sequence and per-token statistics of causal LMs on one padded batch.

For a sequence x = (x_0 … x_{L−1}) and a model p, position t (0 ≤ t < L−1) predicts x_{t+1} from
x_{≤t}. Over those L−1 positions (nats, temperature 1):

    nll_sum = −Σ_t log p(x_{t+1} | x_{≤t})          nll = nll_sum / (L − 1)
    entropy = mean_t H(p(· | x_{≤t}))
    kl_ts   = mean_t KL(p_T(· | x_{≤t}) ‖ p_S(· | x_{≤t}))   (same tokenizer only)

and per position the teacher's k most likely next tokens with their log-probabilities and the
leftover mass 1 − Σ exp(top-k log-probs) (Anshumann et al., "Sparse Logit Sampling", ACL 2025, arXiv 2503.16870: a top-k cache without
the rest is biased; the trainer puts the rest in one extra bucket). Log-softmax is taken in
float32 whatever the forward precision.
"""

from __future__ import annotations

import numpy as np
import torch


def lm_logprobs(model, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log p(· | x_{≤t}) for t < L−1: (B, L−1, V) float32."""
    logits = model.model(input_ids=ids, attention_mask=mask).logits
    return torch.log_softmax(logits[:, :-1].float(), dim=-1)


def sequence_nll(logp: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-token NLL (B, L−1) zero on padding, valid-position mask (B, L−1))."""
    target, valid = ids[:, 1:], mask[:, 1:].bool()
    nll = -logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    return torch.where(valid, nll, torch.zeros_like(nll)), valid


def _mean(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    return torch.where(valid, x, torch.zeros_like(x)).sum(1) / valid.sum(1).clamp_min(1)


def teacher_batch(logp_t: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor, *, k: int,
                  logp_s: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The teacher's sequence statistics and per-token top-k of one batch (student ones too when
    ``logp_s`` is the student's log-probs over the same ids: same tokenizer)."""
    nll, valid = sequence_nll(logp_t, ids, mask)
    p_t = logp_t.exp()
    ent = -(p_t * logp_t).sum(-1)
    k = min(k, logp_t.shape[-1])
    top_v, top_i = logp_t.topk(k, dim=-1)
    rest = (1.0 - top_v.exp().sum(-1)).clamp_min(0.0)
    out = {"teacher_nll_sum": nll.sum(1), "teacher_entropy": _mean(ent, valid),
           "topk_ids": top_i.to(torch.int32), "topk_logprobs": top_v.to(torch.float16), "rest_mass": rest.half()}
    if logp_s is not None:
        v = min(logp_t.shape[-1], logp_s.shape[-1])  # a model may pad its embedding past the vocabulary
        s_nll, _ = sequence_nll(logp_s, ids, mask)
        kl = (p_t[..., :v] * (logp_t[..., :v] - logp_s[..., :v])).sum(-1)
        out.update(student_nll_sum=s_nll.sum(1), kl_ts=_mean(kl, valid))
    return out


def nll_sums(model, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Σ_t −log p(x_{t+1} | x_{≤t}) per row of a padded batch, for a model scored on NLL only."""
    logp = lm_logprobs(model, ids, mask)
    nll, _ = sequence_nll(logp, ids, mask)
    return nll.sum(1)


def ragged(parts: list[np.ndarray | None]) -> tuple[np.ndarray, np.ndarray]:
    """(flat values, int32 offsets) of per-row arrays in row order (None rows: empty)."""
    sizes = np.array([0 if p is None else len(p) for p in parts], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int32)
    present = [p for p in parts if p is not None and len(p)]
    flat = np.concatenate(present) if present else np.zeros((0,), dtype=np.float32)
    return flat, offsets
