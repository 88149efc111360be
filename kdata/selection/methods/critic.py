"""Critic filtering as a selection stage (Symbolic Knowledge Distillation, arXiv 2110.07178).

A filter: rows the fitted critic (``kdata critic fit``, see ``kdata/selection/critic_model.py``) scores below its
threshold are rejected as ``critic_reject``; its P(accept) is recorded as ``score_critic`` and,
when the critic is the last method of the chain, ranks what it accepts. ``recall=`` /
``precision=`` (``--critic-recall``) re-choose the cut on the critic's stored validation split.

Options: ``path`` (critic directory, from ``--critic``), ``recall``, ``precision``.
"""

from __future__ import annotations

from kdata.core.errors import KdataError
from kdata.selection.methods import MethodResult, register
from kdata.selection.methods.view import ScoreView

REASON = "critic_reject"


@register("critic", kind="filter", needs=("critic",), doc="critic filter: reject what a fitted accept/reject classifier rejects (arXiv 2110.07178)")
def critic(view: ScoreView, *, budget, seed, path: str | None = None, recall: float | None = None,
           precision: float | None = None, pool=None, **_) -> MethodResult:
    from kdata.selection.critic_model import load_critic

    if not path:
        raise KdataError("method 'critic' needs a fitted critic: --critic DIR (from `kdata critic fit`)")
    crit = load_critic(path).with_target(recall=recall, precision=precision)
    prob = crit.score(view, pool=pool)  # a text critic reads the texts from the pool
    keep = prob >= crit.threshold
    return MethodResult(score=prob, keep=keep, reason=REASON,
                        info={"threshold": crit.threshold, "target": crit.target, "accepted": int(keep.sum()),
                              "val_metrics": crit.metrics})
