"""What methods need beyond the scores table, provided in one place.

Each method declares ``needs=`` when it registers (``kdata.selection.methods.register``); this
module maps every need to a provider that builds the method's extra options from the run:

* ``critic``    ← ``--critic DIR`` (path) and ``--critic-recall`` (re-chosen cut)
* ``reference`` ← ``--reference SPEC``: the pool scored with the reference model (cached)
* ``domains``   ← the pool's ``domain`` column as a sample_id → domain table
* ``lm_domains`` ← the same, for causal-LM runs only (``coverage`` stratifies LM text by domain,
  image runs by predicted class, so image pools are not read for it)

Whether the run's scores table carries the teacher embeddings is decided here too
(``needs_embeddings``): the score cache keeps them for every unit, the run loads them only for a step
that reads them.

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
from kdata.selection.critic_model import load_critic
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
    score_cfg: object = None  # the run's ScoreConfig: a reference model is scored as teacher and student are


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
    return {"reference": reference_scores(ctx.pool, ref, device=ctx.device, like=ctx.score_cfg)}


def _domains(ctx: Context) -> dict:
    dom = pool_domains(ctx.pool)
    return {"domains": dom} if dom is not None else {}


def _lm_domains(ctx: Context) -> dict:
    return _domains(ctx) if getattr(ctx.teacher, "kind", None) == "causal_lm" else {}


# built-in methods that never read the ``embedding`` column; any other (coverage's centroid signal,
# a method registered outside kdata) gets it, and ``critic`` when its critic was fitted on it
NO_EMBEDDING = frozenset({"kd3", "rad", "random", "ddk", "miniplm", "teacher_confidence", "disagreement",
                          "student_entropy"})


def needs_embeddings(cfg, methods: list[str], *, balance: str | None, dedup: str | None) -> bool:
    """Whether a step of this run reads the scores' ``embedding`` column (the teacher's features,
    260 B to 4 KB a row): a method outside ``NO_EMBEDDING``, a ``--critic`` fitted with embeddings,
    ``--balance cluster`` or ``--dedup semantic``. When none does, the run's scores table is read
    without it; the cache entries are the same either way (``ScoreConfig.load_embeddings``)."""
    if balance == "cluster" or dedup == "semantic":
        return True
    for name in methods:
        if name == "critic":
            given = (getattr(cfg, "method_options", None) or {}).get("critic") or {}
            path = given.get("path") or getattr(cfg, "critic", None)  # as method_options resolves it
            if path is None or _critic_uses_embedding(path):
                return True
        elif name not in NO_EMBEDDING:
            return True
    return False


def _critic_uses_embedding(path: str) -> bool:
    """Whether the critic at ``path`` scores the embedding; True when it cannot be read (the
    critic method then fails with its own line, with the column there as before)."""
    try:
        return load_critic(path).uses_embedding
    except (KdataError, KeyError, OSError, ValueError):
        return True


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
