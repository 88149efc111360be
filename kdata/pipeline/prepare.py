"""Before scoring: open the pool, load the models (or bring-your-own predictions), resolve the recipe.

Every check that needs no scoring happens here, so bad input fails before any work starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa

from kdata.core.errors import KdataError
from kdata.models.files import pool_class_names
from kdata.models.spec import Model, load_model, pick_device
from kdata.pipeline.config import RunOptions, SelectConfig, pool_limits
from kdata.pools.spec import Pool, open_pool
from kdata.scoring.byo import ByoModel, load_with_checksum
from kdata.scoring.score import ScoreConfig, check_models, resolve_precision
from kdata.selection.recipes import DEFAULT_BALANCE, default_recipe
from kdata.selection.run import parse_methods


@dataclass
class Prepared:
    """What a run needs before scoring: the pool, the models, the method chain, the scoring config."""

    cfg: SelectConfig
    pool: Pool
    teacher: Model | ByoModel
    student: Model | ByoModel
    methods: list[str]
    balance: str | None
    score_cfg: ScoreConfig
    device: object
    byo: pa.Table | None = None  # the loaded predictions of --scores, already scored
    extra: dict = field(default_factory=dict)


def resolve_methods(cfg: SelectConfig) -> list[str]:
    """The method chain: the default recipe's when ``--method`` is left at ``default``."""
    return default_recipe(cfg) if cfg.is_default_recipe else parse_methods(cfg.method)


def resolve_balance(cfg: SelectConfig) -> str | None:
    """``cfg.balance``, or the default recipe's balance when both are left unset (recorded in the manifest)."""
    if cfg.balance is None and cfg.is_default_recipe:
        return DEFAULT_BALANCE
    return None if cfg.balance in (None, "none") else cfg.balance


def prepare(cfg: SelectConfig, *, opts: RunOptions = RunOptions(), load=load_model) -> Prepared:
    """Open the pool and load the models (``load(spec, device=)``; the flow passes a cached loader)."""
    methods, balance = resolve_methods(cfg), resolve_balance(cfg)
    if cfg.scores:
        return _prepare_byo(cfg, opts=opts, methods=methods, balance=balance)
    pool = open_pool(cfg.pool, limits=pool_limits(cfg))
    if not pool.units:
        raise KdataError(f"{cfg.pool}: the pool is empty")
    device = pick_device(opts.device)
    with pool_class_names(pool.class_names):  # zero-shot / sidecar-less models use the pool's classes
        teacher, student = load(cfg.teacher, device=device), load(cfg.student, device=device)
    check_models(teacher, student)
    pool.check_labels(teacher.class_names)
    score_cfg = ScoreConfig(batch_size=opts.batch_size, topk=cfg.topk, temperature=cfg.temperature,
                            num_workers=opts.num_workers, max_pixels=cfg.max_pixels,
                            precision=resolve_precision(cfg.precision, device))
    return Prepared(cfg=cfg, pool=pool, teacher=teacher, student=student, methods=methods, balance=balance,
                    score_cfg=score_cfg, device=device)


def _prepare_byo(cfg: SelectConfig, *, opts: RunOptions, methods: list[str], balance: str | None) -> Prepared:
    """``--scores FILE``: the predictions stand in for the models (kdata.scoring.byo)."""
    if cfg.hard:
        raise KdataError("--hard needs teacher and student models (it cannot run on --scores predictions)")
    scores, C, class_names, digest = load_with_checksum(cfg.scores, topk=cfg.topk, temperature=cfg.temperature)
    teacher = ByoModel(spec=f"byo:{cfg.scores}#teacher", num_classes=C, class_names=class_names, checksum=digest)
    student = ByoModel(spec=f"byo:{cfg.scores}#student", num_classes=C, class_names=class_names, checksum=digest)
    pool = open_pool(cfg.pool, limits=pool_limits(cfg)) if cfg.pool else Pool(spec="", units=[], description="no payload (--scores without --pool)")
    score_cfg = ScoreConfig(batch_size=opts.batch_size, topk=cfg.topk, temperature=cfg.temperature)
    return Prepared(cfg=cfg, pool=pool, teacher=teacher, student=student, methods=methods, balance=balance,
                    score_cfg=score_cfg, device="cpu", byo=scores)
