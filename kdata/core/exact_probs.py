"""Exact per-row probabilities the selection methods read, computed while the full logits are at hand.

Above 128 classes the scores keep the top-k soft labels, not the logits (N × C floats would not fit:
10M rows × 1,000 classes is 40 GB), and a method reading p(c | x) at a class outside the top-k would
see the rest of the mass spread evenly: MiniPLM's log p_T(y) − log p_S(y) moved by up to 4.6 nats on a
300-class file, keeping 8 of its exact top 40. These columns hold, per row, what the methods need,
from the full log-softmax at the scoring temperature (O(B × C) per batch, as the statistics are):

* ``teacher_y_logprob``, ``student_y_logprob`` — log p(y | x) with y the label when known (0 ≤ label < C),
  else the teacher's prediction (MiniPLM's y);
* ``student_pred_logprob`` — log p_S(teacher's prediction | x) (DDK's student loss without labels);
* ``kd3_half`` — max_c ½ (p_T(c) + p_S(c)) (KD³'s score at its default weight ½).
"""

from __future__ import annotations

import torch

EXACT_COLUMNS = ("teacher_y_logprob", "student_y_logprob", "student_pred_logprob", "kd3_half")
EXACT_VERSION = 1  # in the score cache key of runs that keep no logits: bump when these columns change
MAX_KEPT_CLASSES = 128  # ``keep_logits="auto"`` keeps both networks' logits up to this many classes


def keeps_logits(option: str, num_classes: int) -> bool:
    """Whether scoring keeps the full logits (``keep_logits`` ``yes``, or ``auto`` up to ``MAX_KEPT_CLASSES``);
    when it does not, it stores ``EXACT_COLUMNS`` instead."""
    return option == "yes" or (option == "auto" and num_classes <= MAX_KEPT_CLASSES)


def exact_columns(teacher_logits: torch.Tensor, student_logits: torch.Tensor, *, temperature: float = 1.0,
                  label_idx: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The ``EXACT_COLUMNS`` of one batch (float32, on the logits' device)."""
    lt = torch.log_softmax(teacher_logits.float() / temperature, dim=1)
    ls = torch.log_softmax(student_logits.float() / temperature, dim=1)
    pred = lt.argmax(1)
    y = pred
    if label_idx is not None:
        li = label_idx.to(pred.device).long()
        y = torch.where((li >= 0) & (li < lt.shape[1]), li, pred)
    at = (lambda lp, c: lp.gather(1, c[:, None])[:, 0])
    half = (0.5 * (lt.exp() + ls.exp())).max(1).values
    return {"teacher_y_logprob": at(lt, y), "student_y_logprob": at(ls, y), "student_pred_logprob": at(ls, pred),
            "kd3_half": half}
