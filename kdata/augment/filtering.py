"""HARD's filters on generated rows (teacher flip, critic) and their accounting.

Symbolic Knowledge Distillation (West et al., arXiv 2110.07178): generated data is only worth
keeping after a critic has filtered it. A generated row is rejected as ``hard_teacher_flip`` when
the teacher, re-run on the written PNG, no longer predicts the parent's class; otherwise the critic
decides (``critic_reject``).

Default critic (no trained critic given): three per-row scores in [0, 1] on the written image,
combined by geometric mean:

* ``conf`` — the teacher's top probability (T = 1);
* ``consistency`` — fraction of ``consistency_draws`` small extra perturbations (±4° rotation,
  ±3% translation, noise std 0.02) under which the teacher still predicts the parent's class
  (each row's perturbations drawn from that row's own generator);
* ``typicality`` — ``d_other / (d_own + d_other)`` with ``d_own`` the cosine distance of the
  teacher's penultimate features of the generated image to the centroid of the parent class
  (centroids over the parents' features, grouped by the teacher's prediction) and ``d_other`` the
  distance to the nearest other class centroid: above 0.5 means the sample still sits nearer its
  own class in the teacher's embedding than any other class.

A row is accepted when the combined score ≥ ``critic_threshold``. With a trained critic
(``kdata.selection.critic_model``) its ``accept`` decides instead, at its own (or the requested recall's) cut.

Accounting: ``generated == generated_kept + generated_rejected``, rejections by reason.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F

from kdata.augment.params import PARAM_NAMES
from kdata.augment.transforms import forward_blocks, render, to_model
from kdata.models.spec import Model

FLIP, CRITIC_REJECT = "hard_teacher_flip", "critic_reject"
# Small extra perturbations of the default critic's consistency check (absolute values).
JITTER = {"rotation_deg": 4.0, "translate_x": 0.03, "translate_y": 0.03, "noise_std": 0.02}


def jitter_values(n: int, gen: torch.Generator) -> torch.Tensor:
    """``n`` seeded small perturbations (bounded parameter values) for the consistency check."""
    v = torch.zeros(n, len(PARAM_NAMES))
    for j, name in enumerate(PARAM_NAMES):
        if name in ("scale", "contrast"):
            v[:, j] = 1.0
        elif name in JITTER:
            u = torch.rand(n, generator=gen)
            v[:, j] = JITTER[name] * (u if name == "noise_std" else 2 * u - 1)
    return v


def class_centroids(feat: torch.Tensor, pred: np.ndarray) -> tuple[np.ndarray, torch.Tensor]:
    """Unit-norm mean teacher feature per predicted class: (classes, centroids)."""
    f = F.normalize(feat.float(), dim=1)
    classes = np.unique(pred)
    cent = torch.stack([f[torch.from_numpy(pred == c)].mean(0) for c in classes])
    return classes, F.normalize(cent, dim=1)


def default_critic_scores(*, gen_pix: torch.Tensor, y: np.ndarray, t_probs: torch.Tensor,
                          t_feat: torch.Tensor | None, centroids, teacher: Model, draws: int,
                          gens: list[torch.Generator], device) -> dict[str, np.ndarray]:
    """conf, consistency, typicality and their geometric mean ``score`` for each generated row
    (row i's jitter drawn from ``gens[i]``, so a row's score does not depend on the other rows)."""
    n = len(y)
    conf = t_probs.max(1).values.cpu().numpy().astype(np.float64)
    agree = np.zeros(n)
    yt = torch.from_numpy(y).long()
    with torch.no_grad():
        for _ in range(max(1, draws)):
            v = torch.cat([jitter_values(1, g) for g in gens]).to(device)
            noise = torch.stack([torch.randn(tuple(gen_pix.shape[1:]), generator=g) for g in gens]).to(device)
            xa = render(gen_pix, v, noise, max_sigma=0.5)
            zt, _ = forward_blocks(teacher, to_model(xa, teacher))
            agree += (zt.argmax(1).cpu() == yt).numpy()
    consistency = agree / max(1, draws)
    parts = [conf, consistency]
    typ = np.ones(n)
    if t_feat is not None and centroids is not None:
        classes, cent = centroids
        gf = F.normalize(t_feat.float().cpu(), dim=1)
        # (n, classes) cosine distances, one fixed-shape product per row: a row's value never depends on n
        dist = (1 - torch.stack([cent @ row for row in gf])).clamp_min(0).numpy()
        own = np.searchsorted(classes, y)
        d_own = dist[np.arange(n), own]
        if len(classes) > 1:
            dist[np.arange(n), own] = np.inf
            d_other = dist.min(1)
            typ = d_other / np.maximum(d_own + d_other, 1e-12)
        parts.append(typ)
    score = np.exp(np.mean([np.log(np.clip(p, 1e-12, None)) for p in parts], axis=0))
    score[np.min(parts, axis=0) <= 0] = 0.0
    return {"conf": conf, "consistency": consistency, "typicality": typ, "score": score}


def trained_critic(path: str, scores_table: pa.Table, *, recall: float | None = None
                   ) -> tuple[np.ndarray, np.ndarray, float]:
    """Accept mask, P(accept) and the cut of the fitted critic at ``path`` (``kdata.selection.critic_model``)."""
    from kdata.selection.critic_model import load_critic

    crit = load_critic(path)
    if recall is not None:
        crit = crit.with_target(recall=recall)
    feats = crit.features(scores_table)
    return np.asarray(crit.accept(feats), dtype=bool), np.asarray(crit.score(feats), dtype=np.float64), \
        float(crit.threshold)


@dataclass
class CriticOutcome:
    """The filters' verdict per generated row."""

    reason: np.ndarray  # object array: None (accepted), FLIP or CRITIC_REJECT
    score: np.ndarray  # critic score (NaN where the critic did not run)
    kind: str  # "default" or "trained:<path>"
    threshold: float | None  # the trained critic's cut (None when it did not run), else critic_threshold
    components: dict = field(default_factory=dict)  # default critic: conf, consistency, typicality, score

    @property
    def accepted(self) -> np.ndarray:
        return np.array([r is None for r in self.reason], dtype=bool)


def critic_filter(flipped: np.ndarray, *, threshold: float, default_parts: list[dict], critic: str | None = None,
                  critic_recall: float | None = None,
                  scores_table: Callable[[], pa.Table] | None = None) -> CriticOutcome:
    """Reject teacher flips, then let the critic judge the rest.

    ``default_parts`` are the default critic's per-chunk scores; ``scores_table`` builds the
    scores-schema table a trained ``critic`` reads (called only when it runs).
    """
    n = len(flipped)
    reason = np.where(flipped, FLIP, None).astype(object)
    out = CriticOutcome(reason=reason, score=np.full(n, np.nan), kind="default",
                        threshold=None if critic else threshold)
    alive = ~flipped
    if n and alive.any():
        if critic:
            out.kind = f"trained:{critic}"
            acc, out.score, out.threshold = trained_critic(critic, scores_table(), recall=critic_recall)
            reason[alive & ~acc] = CRITIC_REJECT
        else:
            out.components = {kk: np.concatenate([c[kk] for c in default_parts]) for kk in default_parts[0]}
            out.score = out.components["score"]
            reason[alive & (out.score < threshold)] = CRITIC_REJECT
    return out


def generated_counts(outcome: CriticOutcome, flipped: np.ndarray, *, n_parents: int, skipped: int) -> dict:
    """The generated rows' own accounting (they never enter the pool's ``n_in``), checked."""
    accepted = outcome.accepted
    n_flip = int(flipped.sum())
    n_crit = int(sum(r == CRITIC_REJECT for r in outcome.reason))
    counts = {"generated": len(flipped), "generated_kept": int(accepted.sum()),
              "generated_rejected": int((~accepted).sum()),
              "generated_rejected_by_reason": {kk: v for kk, v in ((FLIP, n_flip), (CRITIC_REJECT, n_crit)) if v},
              "hard_parents": n_parents, "hard_parents_skipped": skipped}
    check_generated_accounting(counts)
    return counts


def check_generated_accounting(counts: dict) -> None:
    """generated == generated_kept + generated_rejected, and the reasons add up."""
    if counts["generated"] != counts["generated_kept"] + counts["generated_rejected"]:
        raise RuntimeError(f"HARD accounting broken: {counts}")
    if sum(counts["generated_rejected_by_reason"].values()) != counts["generated_rejected"]:
        raise RuntimeError(f"HARD rejection reasons do not add up: {counts}")
