"""Teacher–student disagreement statistics over logits, on whatever device the logits live.

One fused pass per batch: log-softmax at temperature T, probabilities, KL both ways, entropies,
margins, agreement and top-k. Only the results leave the device.
"""

from __future__ import annotations

import torch


def log_softmax_t(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    return torch.log_softmax(logits.float() / temperature, dim=-1)


def _top2(p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    k = min(2, p.shape[-1])
    v = torch.topk(p, k, dim=-1).values
    second = v[:, 1] if k > 1 else torch.zeros_like(v[:, 0])
    return v[:, 0], second


def disagreement(teacher_logits: torch.Tensor, student_logits: torch.Tensor, *, temperature: float = 1.0,
                 topk: int = 5, label_idx: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Per-row statistics (all float32 unless noted).

    KL(t‖s) = Σ p_t (log p_t − log p_s), KL(s‖t) likewise, H(p) = −Σ p log p, margin = p(1) − p(2),
    all at temperature T. Top-k indices/probabilities/logits are the teacher's soft labels.
    """
    if teacher_logits.shape != student_logits.shape:
        raise ValueError(f"teacher logits {tuple(teacher_logits.shape)} vs student {tuple(student_logits.shape)}")
    lt, ls = log_softmax_t(teacher_logits, temperature), log_softmax_t(student_logits, temperature)
    pt, ps = lt.exp(), ls.exp()
    k = min(topk, lt.shape[-1])
    t_top = torch.topk(lt, k, dim=-1)
    s_top = torch.topk(ls, k, dim=-1)
    t1, t2 = _top2(pt)
    s1, s2 = _top2(ps)
    out = {
        "teacher_pred": t_top.indices[:, 0].int(),
        "student_pred": s_top.indices[:, 0].int(),
        "teacher_conf": t1,
        "student_conf": s1,
        "teacher_margin": t1 - t2,
        "student_margin": s1 - s2,
        "teacher_entropy": -(pt * lt).sum(-1),
        "student_entropy": -(ps * ls).sum(-1),
        "kl_ts": (pt * (lt - ls)).sum(-1).clamp_min(0),
        "kl_st": (ps * (ls - lt)).sum(-1).clamp_min(0),
        "teacher_topk_idx": t_top.indices.int(),
        "teacher_topk_prob": t_top.values.exp(),
        "teacher_topk_logit": torch.gather(teacher_logits.float(), 1, t_top.indices),
        "student_topk_idx": s_top.indices.int(),
        "student_topk_prob": s_top.values.exp(),
    }
    out["agree"] = out["teacher_pred"] == out["student_pred"]
    if label_idx is not None:
        li = label_idx.long().clamp_min(0)
        lp = torch.gather(pt, 1, li[:, None])[:, 0]
        out["teacher_label_prob"] = torch.where(label_idx >= 0, lp, torch.full_like(lp, float("nan")))
    else:
        out["teacher_label_prob"] = torch.full_like(t1, float("nan"))
    return out
