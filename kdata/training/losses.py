"""The distillation losses and the teacher targets rebuilt from stored top-k soft labels.

The loss (Hinton et al. 2015) is

    L = α · T² · KL(p_t^T ‖ p_s^T) + (1 − α) · CE(s, y_web)

where p^T is a softmax at temperature T and the CE term averages over rows with a web label
(``label_idx ≥ 0``; rows without one contribute only the KD term). ``loss="nkd"`` replaces the KD
term with Normalized KD (Yang et al., arXiv 2303.13005):

    NKD = −t_y · log s_y − γ · T² · Σ_{i≠y} N(t^T)_i · log N(s^T)_i

with y the web label (the teacher's top-1 when unknown), t_y the teacher's probability of y at
T = 1 (so a wrong web label, which the teacher gives little mass, barely pulls), and N(·) the
distribution renormalised over the non-target classes.

**Reconstructing the teacher's distribution from top-k.** A shard stores the teacher's top-k raw
logits z_1..z_k and probabilities p_1..p_k at the scoring temperature T_s (full-softmax
probabilities, so the rest of the mass is r = 1 − Σ p_i). We give the C − k missing classes one
shared logit z_r chosen so that, at T_s, they hold exactly r between them:
log Z = z_1/T_s − log p_1 and z_r = T_s · (log(r / (C − k)) + log Z). The target at the training
temperature T is then softmax([z_1..z_k, z_r, …, z_r] / T). At T = T_s this reproduces the stored
probabilities exactly with the remainder spread uniformly; at other T it re-tempers the same
logits; with k = C it is the teacher's full distribution. (Renormalising over the top-k instead
would throw away the teacher's "everything else" mass and make the target over-confident.)

``batch_loss`` is the trainer's loss of one batch: the light random affine ``jitter`` of its images,
the student's forward pass, the targets rebuilt and the loss chosen by the config.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdata.training.batch_jitter import jitter
from kdata.training.evaluate import autocast


def soft_targets(topk_idx: torch.Tensor, topk_logit: torch.Tensor, topk_prob: torch.Tensor, *, num_classes: int,
                 temperature: float, score_temperature: float = 1.0) -> torch.Tensor:
    """The teacher's full distribution at ``temperature`` rebuilt from stored top-k (see module doc)."""
    idx = topk_idx.long()
    z = topk_logit.float()
    p = topk_prob.float().clamp_min(1e-12)
    k = idx.shape[1]
    full = torch.empty(idx.shape[0], num_classes, dtype=torch.float32, device=z.device)
    if k < num_classes:
        rest = (1.0 - p.sum(1)).clamp_min(1e-12)
        log_z = z[:, 0] / score_temperature - p[:, 0].log()
        z_rest = score_temperature * (torch.log(rest / (num_classes - k)) + log_z)
        full[:] = z_rest[:, None]
    full.scatter_(1, idx, z)
    return torch.softmax(full / temperature, dim=1)


def kd_loss(student_logits: torch.Tensor, target: torch.Tensor, labels: torch.Tensor, *, temperature: float,
            alpha: float) -> torch.Tensor:
    """α·T²·KL(target ‖ softmax(s/T)) (batch mean) + (1−α)·CE(s, labels) over rows with labels ≥ 0."""
    log_ps = torch.log_softmax(student_logits.float() / temperature, dim=1)
    kl = (target * (target.clamp_min(1e-12).log() - log_ps)).sum(1).mean()
    return alpha * temperature ** 2 * kl + (1 - alpha) * ce(student_logits, labels)


def nkd_loss(student_logits: torch.Tensor, target_t1: torch.Tensor, target: torch.Tensor, labels: torch.Tensor, *,
             temperature: float, alpha: float, gamma: float = 1.5) -> torch.Tensor:
    """α·NKD + (1−α)·CE: ``target_t1`` is the teacher at T = 1, ``target`` at ``temperature``."""
    s = student_logits.float()
    y = torch.where(labels >= 0, labels, target_t1.argmax(1)).long()[:, None]
    log_s1 = torch.log_softmax(s, dim=1)
    t_y = target_t1.gather(1, y)[:, 0]
    target_term = -(t_y * log_s1.gather(1, y)[:, 0]).mean()
    mask = torch.ones_like(s, dtype=torch.bool).scatter_(1, y, False)
    # non-target distributions at T, renormalised over the non-target classes
    log_sn = torch.log_softmax((s / temperature).masked_fill(~mask, float("-inf")), dim=1)
    tn = target.masked_fill(~mask, 0.0)
    tn = tn / tn.sum(1, keepdim=True).clamp_min(1e-12)
    non_target = -(tn * log_sn.masked_fill(~mask, 0.0)).sum(1).mean()
    nkd = target_term + gamma * temperature ** 2 * non_target
    return alpha * nkd + (1 - alpha) * ce(student_logits, labels)


def ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    have = labels >= 0
    if not bool(have.any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits.float()[have], labels[have].long())


def batch_loss(student, batch, *, config, gen, device, pin: bool, num_classes: int,
               score_temperature: float) -> tuple[torch.Tensor, int]:
    """The distillation loss of one batch of ``student`` (a ``Model``; soft targets rebuilt from the stored
    top-k, ``config`` a ``TrainConfig``) and its row count."""
    x, idx, logit, prob, y = (t.to(device, non_blocking=pin) for t in batch)
    if config.augment:
        x = jitter(x, gen)
    with autocast(device):
        s_logits, _ = student.forward(x)
    s_logits = s_logits.float()
    target = soft_targets(idx, logit, prob, num_classes=num_classes, temperature=config.temperature,
                          score_temperature=score_temperature)
    if config.loss == "kd":
        return kd_loss(s_logits, target, y, temperature=config.temperature, alpha=config.alpha), len(y)
    t1 = soft_targets(idx, logit, prob, num_classes=num_classes, temperature=1.0, score_temperature=score_temperature)
    return nkd_loss(s_logits, t1, target, y, temperature=config.temperature, alpha=config.alpha,
                    gamma=config.nkd_gamma), len(y)
