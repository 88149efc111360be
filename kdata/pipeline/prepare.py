"""Before scoring: open the pool, load the models (or bring-your-own predictions), resolve the recipe.

Every check that needs no scoring happens here, so bad input fails before any work starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from kdata.core.errors import KdataError
from kdata.core.main_guard import check_not_importing_main
from kdata.models.files import pool_class_names
from kdata.models.spec import Model, load_model, pick_device
from kdata.pipeline.byo_labels import pool_label_resolver
from kdata.pipeline.config import RunOptions, SelectConfig, pool_limits, validate, validate_run
from kdata.pipeline.needs import needs_embeddings
from kdata.pipeline.pool_checks import check_budget_fits, check_unique_pool_ids
from kdata.pipeline.text import check_image_pool, is_text_run, prepare_text
from kdata.pools.spec import Pool, open_pool
from kdata.scoring.byo import ByoModel, load_with_checksum
from kdata.scoring.score import ScoreConfig, check_models, resolve_precision
from kdata.selection.recipes import DEFAULT_BALANCE, default_dedup, default_recipe
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
    byo_quarantined: list[tuple[str, str]] = field(default_factory=list)  # scored ids --pool lacks
    extra: dict = field(default_factory=dict)


def resolve_methods(cfg: SelectConfig) -> list[str]:
    """The method chain: the default recipe's when ``--method`` is left at ``default``."""
    return default_recipe() if cfg.is_default_recipe else parse_methods(cfg.method)


def resolve_balance(cfg: SelectConfig) -> str | None:
    """``cfg.balance``, or the default recipe's balance when both are left unset (recorded in the manifest)."""
    if cfg.balance is None and cfg.is_default_recipe:
        return DEFAULT_BALANCE
    return None if cfg.balance in (None, "none") else cfg.balance


def resolve_dedup(cfg: SelectConfig) -> str | None:
    """``cfg.dedup``, or the default recipe's (exact + near when a pool is read) when both are left unset."""
    if cfg.dedup is None and cfg.is_default_recipe:
        return default_dedup(cfg)
    return cfg.dedup


def prepare(cfg: SelectConfig, *, opts: RunOptions = RunOptions(), load=load_model) -> Prepared:
    """Open the pool and load the models (``load(spec, device=)``, text models also with ``precision=``,
    ``trust_remote_code=``, ``max_length=``; the flow passes a cached loader).

    ``cfg`` and ``opts`` are checked first (``validate``, ``validate_run``: the options, the method
    chain and its ``method_options``), so the stage-by-stage API (prepare → score → finish) refuses
    what ``run_select`` refuses, before any work."""
    check_not_importing_main()
    validate(cfg)
    validate_run(opts)
    methods, balance = resolve_methods(cfg), resolve_balance(cfg)
    if cfg.scores:
        return _prepare_byo(cfg, opts=opts, methods=methods, balance=balance)
    if is_text_run(cfg):  # Hugging Face text models (kdata.pipeline.text)
        check_text_dedup(cfg)
        prep = prepare_text(cfg, opts=opts, methods=methods, balance=balance, prepared=Prepared, load=load)
        return check_critic(prep)
    if cfg.embedder:
        raise KdataError(f"--embedder {cfg.embedder}: sentence embeddings dedup text pools; this run scores "
                         "images (near/semantic image dedup uses pixels and the teacher's features)")
    pool = open_pool(cfg.pool, limits=pool_limits(cfg))
    if not pool.units:
        raise KdataError(f"{cfg.pool}: the pool is empty")
    check_image_pool(pool, spec=cfg.pool)
    # the pool's size and ids from its id columns alone: a budget over the pool or a repeated id is one
    # line before any model loads (curate's finish checks both again on what was scored)
    check_budget_fits(cfg.budget, check_unique_pool_ids(pool), where=cfg.pool)
    device = pick_device(opts.device)
    with pool_class_names(pool.class_names):  # zero-shot / sidecar-less models use the pool's classes
        teacher, student = load(cfg.teacher, device=device), load(cfg.student, device=device)
    check_models(teacher, student)
    pool.check_labels(teacher.class_names)
    score_cfg = ScoreConfig(batch_size=opts.batch_size, topk=cfg.topk, temperature=cfg.temperature,
                            num_workers=opts.num_workers, max_pixels=cfg.max_pixels,
                            precision=resolve_precision(cfg.precision, device),
                            load_embeddings=needs_embeddings(cfg, methods, balance=balance, dedup=resolve_dedup(cfg)))
    return check_critic(Prepared(cfg=cfg, pool=pool, teacher=teacher, student=student, methods=methods,
                                 balance=balance, score_cfg=score_cfg, device=device))


def check_critic(prep: Prepared) -> Prepared:
    """``prep``, once the critic of ``--critic`` (when ``--method critic`` or ``--hard`` uses it) is known to
    fit the run: a text critic for a text run, an image critic for images and HARD, and fitted on the
    statistics of these teacher and student (their checksums; ``kdata.selection.critic_checks``). One
    line otherwise, before any scoring."""
    from kdata.selection.critic_checks import check_fitted_models, require_image_critic
    from kdata.selection.critic_model import load_critic

    cfg = prep.cfg
    if not cfg.critic or not ("critic" in prep.methods or cfg.hard):
        return prep
    crit = load_critic(cfg.critic)
    if cfg.hard:
        require_image_critic(cfg.critic, crit, why="--hard (it filters generated images)")
    text = "text_models" in prep.extra
    if text != crit.is_text:
        kind = "a text critic cannot score images" if crit.is_text else \
            "an image-score critic cannot score a text pool"
        raise KdataError(f"{cfg.critic}: {kind} ({cfg.pool}); fit one on this run's kind of pool with "
                         "kdata critic fit --teacher/--student as here")
    check_fitted_models(cfg.critic, crit, teacher=prep.teacher, student=prep.student)
    return prep


def check_text_dedup(cfg: SelectConfig) -> None:
    """An explicit ``--dedup near|semantic`` on text needs ``--embedder`` (one line, before any work);
    the embedder directory must exist (``kdata.dedup.text``)."""
    from kdata.models.hf import text_model_path

    if cfg.dedup in ("near", "semantic") and not cfg.embedder:
        raise KdataError(f"--dedup {cfg.dedup} on text compares sentence embeddings: give --embedder hf:PATH "
                         "(a local sentence-transformers or transformers encoder), or --dedup exact")
    if cfg.embedder and cfg.embedder.startswith("hf:") and not text_model_path(cfg.embedder).is_dir():
        raise KdataError(f"--embedder {cfg.embedder}: model directory not found")


NO_PREDICTION = "no prediction in --scores"  # a pool row the predictions file lacks: not a candidate
LOGPROB_METHODS = ("miniplm", "random")  # what a file of log-probabilities alone can rank by


def _prepare_byo(cfg: SelectConfig, *, opts: RunOptions, methods: list[str], balance: str | None) -> Prepared:
    """``--scores FILE``: the predictions stand in for the models (kdata.scoring.byo)."""
    if cfg.hard:
        raise KdataError("--hard needs teacher and student models (it cannot run on --scores predictions)")
    pool = open_pool(cfg.pool, limits=pool_limits(cfg)) if cfg.pool else None
    scores, C, class_names, digest = load_with_checksum(cfg.scores, topk=cfg.topk, temperature=cfg.temperature,
                                                        labels=pool_label_resolver(pool, where=cfg.scores))
    if C == 1 and "teacher_logprob" in scores.column_names:  # log-probabilities only: no classes to compare
        others = [m for m in methods if m not in LOGPROB_METHODS]
        if others or balance == "class":
            what = "--balance class" if not others else (
                "the default recipe" if cfg.is_default_recipe else f"--method {','.join(others)}")
            raise KdataError(f"--scores {cfg.scores}: holds teacher_logprob/reference_logprob, no class "
                             f"predictions, so {what} has nothing to rank by; use --method miniplm (or random)")
    teacher = ByoModel(spec=f"byo:{cfg.scores}#teacher", num_classes=C, class_names=class_names, checksum=digest)
    student = ByoModel(spec=f"byo:{cfg.scores}#student", num_classes=C, class_names=class_names, checksum=digest)
    pool = pool or Pool(spec="", units=[], description="no payload (--scores without --pool)")
    scores, missing = match_pool(scores, pool, scores_file=cfg.scores)
    no_pred = sum(why.startswith(NO_PREDICTION) for _, why in missing)  # counted as curate's finish counts
    check_budget_fits(cfg.budget, scores.num_rows + len(missing) - no_pred, where=cfg.pool or cfg.scores)
    score_cfg = ScoreConfig(batch_size=opts.batch_size, topk=cfg.topk, temperature=cfg.temperature,
                            num_workers=opts.num_workers)  # nothing to decode for scores: dedup features use it
    return Prepared(cfg=cfg, pool=pool, teacher=teacher, student=student, methods=methods, balance=balance,
                    score_cfg=score_cfg, device="cpu", byo=scores, byo_quarantined=missing)


def match_pool(scores: pa.Table, pool: Pool, *, scores_file: str) -> tuple[pa.Table, list[tuple[str, str]]]:
    """Split ``--scores`` rows into those ``--pool`` holds and the rest, quarantined (they have no payload
    to write); the pool's rows the file has no prediction for are quarantined too (nothing to rank them
    by), so every id of either input is counted. A pool holding none of the ids is the wrong pool: one
    line naming an id of each, before any work."""
    if not pool.units:
        return scores, []
    pool_ids = pa.chunked_array([u.sample_ids() for u in pool.units], pa.string()).combine_chunks()
    if len(pc.unique(pool_ids)) != len(pool_ids):  # which payload would a kept id get?
        dup = pc.filter(pc.value_counts(pool_ids).field("values"), pc.greater(pc.value_counts(pool_ids).field("counts"), 1))
        raise KdataError(f"{pool.spec}: sample_id '{dup[0].as_py()}' occurs more than once in the pool; "
                         "sample ids must be unique")
    found = pc.is_in(scores.column("sample_id"), value_set=pool_ids)
    if not pc.any(found).as_py() and scores.num_rows:
        raise KdataError(f"{pool.spec}: holds none of the {scores.num_rows} sample ids of {scores_file} (e.g. "
                         f"'{scores.column('sample_id')[0].as_py()}' there, '{pool_ids[0].as_py() if len(pool_ids) else None}' "
                         "here); --pool must be the pool the predictions were made on")
    unscored = pool_ids.filter(pc.invert(pc.is_in(pool_ids, value_set=scores.column("sample_id")))).to_pylist()
    quarantined = [(sid, f"{NO_PREDICTION} {scores_file}: nothing to rank it by") for sid in unscored]
    if pc.all(found).as_py():
        return scores, quarantined
    absent = scores.filter(pc.invert(found)).column("sample_id").to_pylist()
    reason = f"not in --pool {pool.spec}: no payload to write"
    return scores.filter(found), [(sid, reason) for sid in absent] + quarantined
