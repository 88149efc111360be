"""The curation core: scores → selection → decisions → curated rows (+ HARD) → ``write_output``.

``finish`` is the one place where a selection becomes a dataset; ``kdata select``, the demo's
random baseline, the trainer's re-selection, the ``curate`` flow and the quality benchmark all
call it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from kdata.augment.hard import EXCLUDED_FILE, manifest_section, pipeline_hard, write_excluded
from kdata.core.errors import KdataError
from kdata.core.lock import exclusive
from kdata.core.warn import warn
from kdata.dataset.decisions import build_decisions
from kdata.dataset.schema import KEPT, REJECTED, SHARD_SCHEMA, TEXT_LM_COLUMNS, conform
from kdata.dedup.faiss_dedup import pipeline_dedup
from kdata.pipeline.curated_rows import CuratedRows, assemble, kept_scores, missing_ids
from kdata.pipeline.needs import Context, method_options
from kdata.pipeline.output import Output, RunReport, already_complete, write_output
from kdata.pipeline.prepare import NO_PREDICTION, Prepared, resolve_dedup
from kdata.pipeline.rerun import as_recorded_pool
from kdata.scoring.label_order import label_order_problem
from kdata.pools.label_column import labels_for
from kdata.pools.spec import Pool
from kdata.selection.balance import attach_domain
from kdata.selection.run import Selection, parse_budget, select


@dataclass
class Scored:
    """The scores of a pool: one row per readable sample, the quarantined, and how scoring went."""

    scores: pa.Table
    quarantined: list[tuple[str, str]] = field(default_factory=list)
    info: dict = field(default_factory=dict)  # n_in, units, cache_hits


def check_unique_ids(scores: pa.Table, quarantined: list[tuple[str, str]], *, pool: str) -> None:
    ids = pa.concat_arrays([scores.column("sample_id").combine_chunks(),
                            pa.array([q[0] for q in quarantined], pa.string())])
    if len(pc.unique(ids)) != len(ids):
        vc = pc.value_counts(ids)
        dup = next(v["values"] for v in vc.to_pylist() if v["counts"] > 1)
        raise KdataError(f"{pool}: sample_id '{dup}' occurs more than once; sample ids must be unique")


def curated_table(pool: Pool, scores: pa.Table, sel: Selection) -> pa.Table:
    """Kept rows: pool payload + provenance + teacher soft labels + student prediction + scores, best first.

    One table holding every kept payload: for HARD, which generates from it; ``curated_rows`` writes
    the same rows holding one shard at a time."""
    kept = kept_scores(scores, sel)
    wanted = kept.column("sample_id").combine_chunks()
    wanted_set = set(wanted.to_pylist()) if pool.units else set()
    parts = [unit.take_ids(wanted_set) for unit in pool.units]  # kept rows' payloads alone (not whole files)
    if not parts:  # --scores without --pool: the curated rows carry no payload
        return conform(kept.append_column("kind", pa.array(["original"] * kept.num_rows)), SHARD_SCHEMA,
                       extra=TEXT_LM_COLUMNS)
    payload = pa.concat_tables(parts)
    # line payload rows up with the (rank-ordered) scores; pyarrow's join has no list columns
    pos = pc.index_in(payload.column("sample_id"), value_set=wanted).to_numpy(zero_copy_only=False)
    payload = payload.take(pa.array(np.argsort(pos, kind="stable")))
    if payload.num_rows != kept.num_rows:
        found = pc.is_in(wanted, value_set=payload.column("sample_id").combine_chunks()).to_numpy(zero_copy_only=False)
        if found.all():
            raise KdataError(f"{pool.spec}: a kept sample id occurs more than once in the pool; ids must be unique")
        raise missing_ids(pool.spec, wanted, found)
    return assemble(kept, payload)


def curated_rows(pool: Pool, scores: pa.Table, sel: Selection) -> pa.Table | CuratedRows:
    """The rows ``curated_table`` gives, for ``write_output``: with pool payloads to read, a
    ``CuratedRows`` that reads them a shard at a time when written (a table otherwise)."""
    if not pool.units or not np.any(sel.kept):
        return curated_table(pool, scores, sel)
    return CuratedRows(pool, kept_scores(scores, sel))


def with_pool_labels(scores: pa.Table, pool: Pool) -> pa.Table:
    """``scores`` plus the pool's web ``label`` (``kdata.pools.label_column``): text scores carry no label (a
    causal LM has no classes; a classifier's ``label_idx`` is −1 for labels it lacks), yet the decisions
    table records every row's."""
    if "label" in scores.column_names or not pool.units:
        return scores
    return scores.append_column("label", labels_for(scores.column("sample_id"), pool))


def _reference_model(prep: Prepared) -> dict:
    """The text run's reference model for the manifest's ``models`` (none otherwise)."""
    ref = getattr(prep.extra.get("text_models"), "reference", None)
    return {"reference": ref.describe()} if ref is not None else {}


def finish(prep: Prepared, scored: Scored, *, out: str, progress=None, before_commit=None) -> RunReport:
    """Select over the scores and write the curated dataset (shards, decisions, card, manifest) to ``out``."""
    with exclusive(out):
        return _finish(prep, scored, out=out, progress=progress, before_commit=before_commit)


def _finish(prep: Prepared, scored: Scored, *, out: str, progress, before_commit) -> RunReport:
    cfg, teacher = as_recorded_pool(prep.cfg, out), prep.teacher
    config_hash = cfg.hash()
    done = already_complete(out, config_hash, config=cfg.recorded())
    if done is not None:
        return done
    n_in = scored.info.get("n_in", scored.scores.num_rows + len(scored.quarantined))
    if n_in == 0:
        raise KdataError(f"{cfg.pool or cfg.scores}: the pool is empty")
    check_unique_ids(scored.scores, scored.quarantined, pool=cfg.pool or cfg.scores)
    if (order := label_order_problem(scored.scores, teacher.class_names)) is not None:
        warn(f"{cfg.teacher if not cfg.scores else cfg.scores}: {order}")
    # a fraction is of the candidates: with --scores and --pool, the predicted rows (a pool row without a
    # prediction is counted, quarantined, but was never a candidate)
    no_pred = sum(why.startswith(NO_PREDICTION) for _, why in scored.quarantined) if prep.byo is not None else 0
    budget = parse_budget(cfg.budget, n_in - no_pred)
    scores = attach_domain(scored.scores, prep.pool) if prep.balance == "domain" else scored.scores
    if progress:
        progress("selecting")
    ctx = Context(cfg=cfg, pool=prep.pool, teacher=teacher, student=prep.student, device=prep.device,
                  score_cfg=prep.score_cfg)
    sel = select(scores, methods=prep.methods, budget=budget, seed=cfg.seed, num_classes=teacher.num_classes,
                 temperature=cfg.temperature, balance=prep.balance, options=method_options(prep.methods, ctx),
                 dedup=pipeline_dedup(replace(cfg, dedup=resolve_dedup(cfg)), prep.pool,
                                      workers=getattr(prep.score_cfg, "num_workers", "auto")))
    labelled = with_pool_labels(scores, prep.pool) if "text_models" in prep.extra else scores
    decisions = build_decisions(labelled, decision=np.where(sel.kept, KEPT, REJECTED), reason=sel.reason,
                                stage=sel.stage, class_names=teacher.class_names, scores=sel.scores,
                                quarantined=scored.quarantined)
    if decisions.num_rows != n_in:
        raise RuntimeError(f"accounting broken: pool has {n_in} samples, decisions cover {decisions.num_rows}")
    # HARD generates from every kept row at once; otherwise payloads stay in the pool until written
    rows = curated_table(prep.pool, scores, sel) if cfg.hard else curated_rows(prep.pool, scores, sel)
    # the soft labels written per row: at most one per class (the hashed config keeps the request)
    topk = min(cfg.topk, teacher.num_classes) if teacher.num_classes else cfg.topk
    lm = {"kind": "causal_lm", "token_topk": scored.info["token_topk"]} \
        if scored.info.get("kind") == "causal_lm" and scored.info.get("token_topk") is not None else {}
    topk = lm.get("token_topk", topk)  # a causal LM's soft labels are per token: that k, not the class top-k
    extra = {"methods": prep.methods, "balance": prep.balance, "dedup_level": resolve_dedup(cfg), "budget_rows": budget,
             "temperature": cfg.temperature, "topk": topk, "class_names": teacher.class_names,
             "pool": {"spec": cfg.pool, "units": len(prep.pool.units), "description": prep.pool.description},
             "method_info": sel.info, "score_cache_hits": scored.info.get("cache_hits", 0),
             "scoring": {k: scored.info[k] for k in ("device", "precision", "workers", "cuda_peak_bytes", "kind",
                                                     "max_length", "token_topk", "tokenizer_shared",
                                                     "reference_tokenizer_shared")
                         if k in scored.info}}  # what the recorded choices resolved to
    extra_files = {}
    if cfg.hard:  # HARD: K generated rows per kept row, critic-filtered, appended (kdata.augment.hard)
        rows, hard = pipeline_hard(rows, cfg=cfg, teacher=teacher, student=prep.student, device=prep.device,
                                   counts={})
        extra["hard"] = manifest_section(hard)
        extra_files[EXCLUDED_FILE] = lambda path: write_excluded(hard, path)
    config = cfg.recorded()  # with --scores the predictions file stands in for both models: none was loaded
    output = Output(rows=rows, decisions=decisions, config=config,
                    config_hash=config_hash,
                    models={"teacher": teacher.describe(), "student": prep.student.describe(),
                            **_reference_model(prep)},
                    meta={"temperature": cfg.temperature, "topk": topk, "class_names": teacher.class_names,
                          "teacher": teacher.spec, "student": prep.student.spec, **lm},
                    extra=extra, extra_files=extra_files, rows_per_shard=cfg.rows_per_shard,
                    row_group_rows=cfg.row_group_rows, pool=prep.pool,
                    info={**{k: extra[k] for k in ("methods", "balance", "budget_rows", "method_info",
                                                   "score_cache_hits")},
                          "units": scored.info.get("units", 0)})
    return write_output(out, output, progress=progress, before_commit=before_commit)
