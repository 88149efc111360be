"""What each method needs from the run beyond the scores table (called by ``pipeline._method_options``).

* ``critic``  ← ``--critic DIR`` (path) and ``--critic-recall`` (re-chosen cut)
* ``miniplm`` ← ``--reference SPEC``: the pool scored with the reference model (cached)
* ``ddk``     ← the pool's ``domain`` column as a sample_id → domain table

Per-method ``SelectConfig.method_options`` override these.
"""

from __future__ import annotations

import pyarrow as pa

from kdata.core.errors import KdataError


def pool_domains(pool) -> pa.Table | None:
    """sample_id → domain over the pool's units (None when the pool has no units)."""
    parts = []
    for unit in getattr(pool, "units", None) or []:
        t = unit.read()
        if "domain" in t.column_names:
            parts.append(t.select(["sample_id", "domain"]))
    return pa.concat_tables(parts) if parts else None


def method_context(cfg, methods: list[str], *, teacher=None, student=None, device="cpu", pool=None) -> dict:
    out: dict[str, dict] = {}
    if "critic" in methods:
        out["critic"] = {"path": cfg.critic, "recall": cfg.critic_recall}
    if "miniplm" in methods and cfg.reference:
        if cfg.scores:
            raise KdataError("--reference: with --scores, give the reference's log-probabilities in the file "
                             "(column reference_logprob) instead of a model")
        from kdata.models.spec import load_model
        from kdata.selection.methods.miniplm import reference_scores

        ref = load_model(cfg.reference, device=device)
        if teacher is not None and ref.num_classes != teacher.num_classes:
            raise KdataError(f"--reference {cfg.reference}: {ref.num_classes} classes, the teacher has "
                             f"{teacher.num_classes}")
        out["miniplm"] = {"reference": reference_scores(pool, ref, device=device)}
    if "ddk" in methods:
        dom = pool_domains(pool)
        if dom is not None:
            out["ddk"] = {"domains": dom}
    return out
