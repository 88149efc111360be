"""What methods need beyond the scores table, provided in one place.

Each method declares ``needs=`` when it registers (``kdata.selection.methods.register``); this
module maps every need to a provider that builds the method's extra options from the run:

* ``critic``    ← ``--critic DIR`` (path) and ``--critic-recall`` (re-chosen cut)
* ``reference`` ← ``--reference SPEC``: the pool scored with the reference model (cached)
* ``domains``   ← the pool's ``domain`` column as a sample_id → domain table
* ``lm_domains`` ← the same, for causal-LM runs only (``coverage`` stratifies LM text by domain,
  image runs by predicted class, so image pools are not read for it)

Per-method ``SelectConfig.method_options`` override what the providers give; they must name
methods of the chain and options those methods take (checked by ``validate`` before any work, and
again here).
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from kdata.core.errors import KdataError
from kdata.models.spec import load_model
from kdata.selection.balance import unit_domains
from kdata.selection.methods import check_chain_options, get_method
from kdata.selection.methods.miniplm import reference_scores


@dataclass
class Context:
    """What providers may use: the run's config, pool, models and device."""

    cfg: object
    pool: object = None
    teacher: object = None
    student: object = None
    device: object = "cpu"


def pool_domains(pool) -> pa.Table | None:
    """sample_id → domain over the pool's units (None when the pool has no units), read without the
    payloads where the reader can (``selection.balance.unit_domains``: Parquet reads two columns)."""
    parts = [pa.table(dict(zip(("sample_id", "domain"), unit_domains(u))))
             for u in getattr(pool, "units", None) or []]
    return pa.concat_tables(parts) if parts else None


def _critic(ctx: Context) -> dict:
    return {"path": ctx.cfg.critic, "recall": ctx.cfg.critic_recall, "pool": ctx.pool}


def _reference(ctx: Context) -> dict:
    cfg = ctx.cfg
    if getattr(ctx.teacher, "kind", None) == "causal_lm":
        return {}  # text: the reference's NLL is a column of the scores (kdata.scoring.text)
    if not cfg.reference:
        return {}  # miniplm falls back to per-token columns of --scores, or the student as reference
    if cfg.scores:
        raise KdataError("--reference: with --scores, give the reference's log-probabilities in the file "
                         "(column reference_logprob) instead of a model")
    ref = load_model(cfg.reference, device=ctx.device)
    if ctx.teacher is not None and ref.num_classes != ctx.teacher.num_classes:
        raise KdataError(f"--reference {cfg.reference}: {ref.num_classes} classes, the teacher has "
                         f"{ctx.teacher.num_classes}")
    return {"reference": reference_scores(ctx.pool, ref, device=ctx.device)}


def _domains(ctx: Context) -> dict:
    dom = pool_domains(ctx.pool)
    return {"domains": dom} if dom is not None else {}


def _lm_domains(ctx: Context) -> dict:
    return _domains(ctx) if getattr(ctx.teacher, "kind", None) == "causal_lm" else {}


PROVIDERS = {"critic": _critic, "reference": _reference, "domains": _domains, "lm_domains": _lm_domains}


def method_options(methods: list[str], ctx: Context) -> dict[str, dict]:
    """Options per method: what its declared needs resolve to, overridden by ``cfg.method_options``
    (checked against the chain first: a method outside it, or an option its function does not take,
    is one KdataError line — ``kdata.selection.methods.check_chain_options``)."""
    raw = getattr(ctx.cfg, "method_options", None) or {}
    check_chain_options(methods, raw)
    given = {k: dict(v) for k, v in raw.items()}
    out: dict[str, dict] = {}
    for name in methods:
        extra: dict = {}
        for need in get_method(name).needs:
            if need not in PROVIDERS:
                raise RuntimeError(f"method {name} needs '{need}', which no provider gives")
            extra.update(PROVIDERS[need](ctx))
        out[name] = {**extra, **given.get(name, {})}
    for name, o in given.items():
        out.setdefault(name, o)
    return out
