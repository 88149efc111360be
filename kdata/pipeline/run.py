"""The curation pipeline as plain stage functions: score → select → (dedup, HARD) → write.

The CLI and the Prefect flows both call these; neither re-implements pipeline logic.
``run_select`` chains them for one run and returns a report whose counts add up:
``n_in == kept + rejected + quarantined``.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from kdata.core.version import __version__
from kdata.dataset.schema import SCHEMA_VERSION, KEPT, QUARANTINED, REJECTED, SHARD_SCHEMA, conform
from kdata.core.errors import KdataError
from kdata.models.spec import Model, load_model, pick_device
from kdata.pools.spec import Pool, open_pool
from kdata.scoring.score import ScoreConfig, check_models, score_pool
from kdata.dataset.decisions import Decisions, check_accounting
from kdata.selection.run import Selection, parse_budget, parse_methods, select
from kdata.dataset.writer import MANIFEST, Staging, build_manifest, check_output_dir, read_manifest, write_decisions, write_shards

DEFAULT_METHOD = "default"


@dataclass
class SelectConfig:
    """Everything that defines a curation run (hashed into ``config_hash``)."""

    pool: str = "builtin:digits-web"
    teacher: str = "builtin:digits-teacher"
    student: str = "builtin:digits-student"
    method: str = DEFAULT_METHOD
    budget: str = "0.3"
    seed: int = 0
    topk: int = 5
    temperature: float = 1.0
    balance: str | None = None
    dedup: str | None = None
    dedup_threshold: float | None = None
    dedup_frac: float | None = None
    hard: int = 0
    critic: str | None = None  # path of a fitted critic (methods issue)
    critic_recall: float | None = None
    reference: str | None = None  # second model spec for miniplm
    scores: str | None = None  # precomputed predictions instead of models
    rows_per_shard: int = 10_000
    row_group_rows: int = 1_000
    method_options: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def hash(self) -> str:
        blob = json.dumps(self.to_dict(), sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()


@dataclass
class RunOptions:
    """How to run (not hashed): device, decode workers, batch size, caching, progress."""

    device: str = "auto"
    num_workers: int = 0
    batch_size: int = 256
    cache: bool = True
    progress: object = None  # callable(stage, done=None, total=None) or None (kdata.cli.common.progress_printer)
    card_dir: str | None = None  # also copy the data card to card_dir/<dataset-name>.md (kdata.card.publish)


@dataclass
class RunReport:
    out: str
    counts: dict
    files: list[dict]
    seconds: float
    status: str = "written"  # or "already complete"
    info: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


# ------------------------------------------------------------------------------------------------
# Stages

def load_models(cfg: SelectConfig, *, device) -> tuple[Model, Model]:
    teacher = load_model(cfg.teacher, device=device)
    student = load_model(cfg.student, device=device)
    check_models(teacher, student)
    return teacher, student


def resolve_methods(cfg: SelectConfig) -> list[str]:
    if cfg.method in (None, "", DEFAULT_METHOD):
        from kdata.selection.recipes import default_recipe

        return default_recipe(cfg)
    return parse_methods(cfg.method)


def resolve_balance(cfg: SelectConfig) -> str | None:
    """``cfg.balance``, or the default recipe's balance when both are left unset."""
    if cfg.balance is None and cfg.method in (None, "", DEFAULT_METHOD):
        from kdata.selection.recipes import DEFAULT_BALANCE

        return DEFAULT_BALANCE
    return None if cfg.balance == "none" else cfg.balance


def check_unique_ids(scores: pa.Table, quarantined: list[tuple[str, str]], *, pool: str) -> None:
    ids = pc.unique(pa.concat_arrays([scores.column("sample_id").combine_chunks(),
                                      pa.array([q[0] for q in quarantined], pa.string())]))
    n = scores.num_rows + len(quarantined)
    if len(ids) != n:
        vc = pc.value_counts(pa.concat_arrays([scores.column("sample_id").combine_chunks(),
                                               pa.array([q[0] for q in quarantined], pa.string())]))
        dup = next(v["values"] for v in vc.to_pylist() if v["counts"] > 1)
        raise KdataError(f"{pool}: sample_id '{dup}' occurs more than once; sample ids must be unique")


def decisions_table(scores: pa.Table, sel: Selection, quarantined: list[tuple[str, str]]) -> pa.Table:
    """One row per input sample: the scored rows with their decision, then the quarantined."""
    n = scores.num_rows
    cols = {
        "sample_id": scores.column("sample_id"),
        "decision": pa.array(np.where(sel.kept, KEPT, REJECTED).tolist(), pa.string()),
        "reason": pa.array(sel.reason.tolist(), pa.string()),
        "stage": pa.array(sel.stage.tolist(), pa.string()),
        "error": pa.nulls(n, pa.string()),
    }
    for name in ("label_idx", "teacher_pred", "student_pred", "teacher_conf", "kl_ts"):
        cols[name] = scores.column(name)
    for name, arr in sel.scores.items():
        cols[name] = pa.array(arr, pa.float32())
    scored = pa.table(cols)
    q = len(quarantined)
    qt = pa.table({"sample_id": pa.array([s for s, _ in quarantined], pa.string()),
                   "decision": pa.array([QUARANTINED] * q, pa.string()),
                   "reason": pa.array(["unreadable"] * q, pa.string()),
                   "stage": pa.array(["score"] * q, pa.string()),
                   "error": pa.array([e for _, e in quarantined], pa.string())})
    return pa.concat_tables([scored, qt], promote_options="default")


def curated_table(pool: Pool, scores: pa.Table, sel: Selection, *, class_names: list[str]) -> pa.Table:
    """Kept rows: pool payload + provenance + teacher soft labels + student prediction + scores, best first."""
    keep_idx = np.flatnonzero(sel.kept)
    kept_scores = scores.take(pa.array(keep_idx))
    extra = {name: pa.array(arr[keep_idx], pa.float32()) for name, arr in sel.scores.items()}
    kept_scores = kept_scores.append_column("rank", pa.array(sel.rank[keep_idx], pa.int32()))
    for name, arr in extra.items():
        kept_scores = kept_scores.append_column(name, arr)
    kept_scores = kept_scores.sort_by("rank")
    wanted = kept_scores.column("sample_id").combine_chunks()
    parts = []
    for unit in pool.units:
        t = unit.read()
        parts.append(t.filter(pc.is_in(t.column("sample_id"), value_set=wanted)))
    if not parts:  # --scores without --pool: the curated rows carry no payload
        return conform(kept_scores.append_column("kind", pa.array(["original"] * kept_scores.num_rows)), SHARD_SCHEMA)
    payload = pa.concat_tables(parts)
    # line payload rows up with the (rank-ordered) scores; pyarrow's join has no list columns
    pos = pc.index_in(payload.column("sample_id"), value_set=wanted).to_numpy(zero_copy_only=False)
    payload = payload.take(pa.array(np.argsort(pos, kind="stable")))
    joined = kept_scores
    for name in payload.column_names:
        if name not in joined.column_names:
            joined = joined.append_column(name, payload.column(name))
    kind = joined.column("kind")
    if kind.null_count:
        joined = joined.set_column(joined.schema.get_field_index("kind"), "kind",
                                   pc.fill_null(kind, "original"))
    return conform(joined, SHARD_SCHEMA)


# ------------------------------------------------------------------------------------------------
# One run

@dataclass
class Prepared:
    """What a run needs before scoring: the pool, the models, the method chain, the scoring config."""

    cfg: SelectConfig
    pool: Pool
    teacher: Model
    student: Model
    methods: list[str]
    score_cfg: ScoreConfig
    device: object


def prepare(cfg: SelectConfig, *, opts: RunOptions = RunOptions()) -> Prepared:
    """Open the pool and load the models; every bad-input check that needs no scoring happens here."""
    methods = resolve_methods(cfg)
    from kdata.dedup.faiss_dedup import check_options as check_dedup_options

    check_dedup_options(cfg.dedup, threshold=cfg.dedup_threshold, frac=cfg.dedup_frac)
    if cfg.hard is not None and cfg.hard < 0:
        raise KdataError(f"--hard {cfg.hard}: must be ≥ 0 (generated rows per kept row)")
    if not cfg.pool:  # only bring-your-own predictions run without a pool (run_select → byo.prepare_byo)
        raise KdataError("--pool: give a pool to score (precomputed predictions: kdata select --scores FILE)")
    pool = open_pool(cfg.pool)
    if not pool.units:
        raise KdataError(f"{cfg.pool}: the pool is empty")
    device = pick_device(opts.device)
    from kdata.models.files import pool_class_names  # zero-shot / sidecar-less models use the pool's classes

    with pool_class_names(pool.class_names):
        teacher, student = load_models(cfg, device=device)
    if pool.class_names and set(pool.class_names) - set(teacher.class_names):
        missing = sorted(set(pool.class_names) - set(teacher.class_names))[:5]
        raise KdataError(f"{cfg.pool}: pool labels {missing} are not among the teacher's class names")
    score_cfg = ScoreConfig(batch_size=opts.batch_size, topk=cfg.topk, temperature=cfg.temperature,
                            num_workers=opts.num_workers)
    return Prepared(cfg=cfg, pool=pool, teacher=teacher, student=student, methods=methods,
                    score_cfg=score_cfg, device=device)


def run_select(cfg: SelectConfig, *, out: str, opts: RunOptions = RunOptions()) -> RunReport:
    """Score, select and write a curated dataset to ``out``. Idempotent for the same config."""
    t0 = time.perf_counter()
    if check_output_dir(out, config_hash=cfg.hash()) == "done":
        return _publish_card(_already_complete(out), opts)
    if cfg.scores:  # bring-your-own predictions instead of models (kdata/byo.py)
        from kdata.scoring.byo import prepare_byo

        prep, scores, quarantined, score_info = prepare_byo(cfg, opts=opts)
    else:
        prep = prepare(cfg, opts=opts)
        scores, quarantined, score_info = score_pool(prep.pool, prep.teacher, prep.student, config=prep.score_cfg,
                                                     device=prep.device, cache=opts.cache, progress=opts.progress)
    report = finish(prep, out=out, scores=scores, quarantined=quarantined, score_info=score_info,
                    progress=opts.progress)
    report.seconds = time.perf_counter() - t0
    return _publish_card(report, opts)


def _already_complete(out: str) -> RunReport:
    m = read_manifest(out)
    return RunReport(out=str(out), counts=m["counts"], files=m["files"], seconds=0.0, status="already complete")


def _publish_card(report: RunReport, opts: RunOptions) -> RunReport:
    """Copy the data card to ``opts.card_dir`` (a catalogue of cards, kdata.card) when asked."""
    if opts.card_dir:
        from kdata.report.card import publish

        report.info["card"] = str(publish(report.out, opts.card_dir))
    return report


def finish(prep: Prepared, *, out: str, scores: pa.Table, quarantined: list[tuple[str, str]],
           score_info: dict, progress=None) -> RunReport:
    """Select over the scores and write the curated dataset (shards, decisions, card, manifest) to ``out``."""
    t0 = time.perf_counter()
    cfg, pool, teacher, student, methods = prep.cfg, prep.pool, prep.teacher, prep.student, prep.methods
    config_hash = cfg.hash()
    if check_output_dir(out, config_hash=config_hash) == "done":
        return _already_complete(out)
    n_in = score_info["n_in"]
    if n_in == 0:
        raise KdataError(f"{cfg.pool}: the pool is empty")
    check_unique_ids(scores, quarantined, pool=cfg.pool)
    budget = parse_budget(cfg.budget, n_in)
    from kdata.dedup.faiss_dedup import pipeline_dedup  # exact/near read payloads per pool unit; semantic uses embeddings

    if cfg.balance == "domain":
        from kdata.selection.balance import attach_domain

        scores = attach_domain(scores, pool)
    if progress:
        progress("selecting")
    sel = select(scores, methods=methods, budget=budget, seed=cfg.seed, num_classes=teacher.num_classes,
                 temperature=cfg.temperature, balance=resolve_balance(cfg),
                 options=_method_options(cfg, methods, teacher=teacher, student=student, device=prep.device, pool=pool),
                 dedup=pipeline_dedup(cfg, pool))
    decisions = decisions_table(scores, sel, quarantined)
    counts = Decisions(decisions).counts
    if counts["n_in"] != n_in:
        raise RuntimeError(f"accounting broken: pool has {n_in} samples, decisions cover {counts['n_in']}")
    check_accounting(counts)
    curated = curated_table(pool, scores, sel, class_names=teacher.class_names)
    if curated.num_rows != counts["kept"]:
        raise RuntimeError(f"kept {counts['kept']} samples but found {curated.num_rows} in the pool")
    hard = None
    if cfg.hard:  # HARD: K generated rows per kept row, critic-filtered, appended (kdata/hard.py)
        from kdata.augment.hard import pipeline_hard

        curated, hard = pipeline_hard(curated, cfg=cfg, teacher=teacher, student=student, device=prep.device,
                                      counts=counts)

    meta = {"schema_version": SCHEMA_VERSION, "kdata_version": __version__, "temperature": cfg.temperature,
            "topk": cfg.topk, "class_names": teacher.class_names, "teacher": teacher.spec,
            "student": student.spec, "config_hash": config_hash}
    if progress:
        progress("writing", 0, 3)
    staging = Staging(out)
    try:
        files = write_shards(curated, staging.path, meta=meta, rows_per_shard=cfg.rows_per_shard,
                             row_group_rows=cfg.row_group_rows)
        write_decisions(decisions, staging.path / "decisions.parquet")
        if hard is not None:
            from kdata.augment.hard import EXCLUDED_FILE, manifest_section, write_excluded

            write_excluded(hard, staging.path / EXCLUDED_FILE)
        manifest = build_manifest(
            files=files, config=cfg.to_dict(), config_hash=config_hash,
            models={"teacher": teacher.describe(), "student": student.describe()}, counts=counts,
            extra={"methods": methods, "budget_rows": budget, "temperature": cfg.temperature, "topk": cfg.topk,
                   "class_names": teacher.class_names, "pool": {"spec": cfg.pool, "units": len(pool.units),
                                                                "description": pool.description},
                   "method_info": _jsonable(sel.info), "score_cache_hits": score_info["cache_hits"],
                   **({"hard": _jsonable(manifest_section(hard))} if hard is not None else {})})
        if progress:
            progress("writing", 1, 3)
        from kdata.report.card import card_entry, write_card  # README.md data card + PNG plots beside the shards

        manifest["card"] = card_entry(write_card(staging.path, manifest=manifest, name=Path(out).resolve().name,
                                                 pool=pool))
        if progress:
            progress("writing", 2, 3)
        _write_manifest(staging.path / MANIFEST, manifest)
        staging.commit()
        if progress:
            progress("writing", 3, 3)
    except BaseException:
        staging.abort()
        raise
    return RunReport(out=str(out), counts=counts, files=files, seconds=time.perf_counter() - t0,
                     info={"methods": methods, "budget_rows": budget, "method_info": _jsonable(sel.info),
                           "score_cache_hits": score_info["cache_hits"], "units": score_info["units"]})


def _write_manifest(path: Path, manifest: dict) -> None:
    from kdata.core.atomic import write_json

    write_json(path, manifest)


def _method_options(cfg: SelectConfig, methods: list[str], **context) -> dict:
    opts = {k: dict(v) for k, v in (cfg.method_options or {}).items()}
    from kdata.selection.methods.wiring import method_context  # what each method needs beyond the scores (methods issue)

    for name, extra in method_context(cfg, methods, **context).items():
        opts[name] = {**extra, **opts.get(name, {})}
    return opts


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=lambda o: o.item() if hasattr(o, "item") else str(o)))
