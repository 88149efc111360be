"""Distil a student on curated shards, with KD³-style re-selection through the curation core.

KD³ (arXiv 2307.11469) selects dynamically as the student learns: with ``--reselect-every E``
the pool is re-scored with the current student every E epochs and the budget re-selected; each
re-selection is written by ``finish`` as a full dataset (manifest, decisions, card) under
``OUT/reselect/reselect-epochNNN``.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from kdata.core.errors import KdataError
from kdata.core.lock import exclusive
from kdata.dataset.manifest import MANIFEST, read_manifest
from kdata.dataset.schema import KEPT
from kdata.models.spec import Model, load_model
from kdata.pipeline.config import SelectConfig
from kdata.pipeline.curate import Scored, finish
from kdata.pipeline.prepare import Prepared
from kdata.pipeline.run import score
from kdata.pools.spec import open_pool
from kdata.scoring.score import ScoreConfig, check_models
from kdata.selection.methods import available
from kdata.training.checkpoint import request_digest, resumes, unfinished, weights_checksum
from kdata.training.shard_dataset import ShardDataset
from kdata.training.train import TrainConfig, run_train


def make_reselector(*, pool: str, teacher: str, work_dir: str | Path, seed: int = 0, device="cpu",
                    topk: int = 5, temperature: float = 1.0, method: str = "kd3", threshold: float | None = None):
    """``fn(student, *, epoch, budget) -> (dataset dir, info)``: re-score POOL with the current student
    and re-select ``budget`` rows with ``method``, written through the curation core. The trainer passes
    the same budget every time: the size of the set training started from. ``threshold``: KD³'s
    confidence cut τ — rows whose combined teacher+student confidence is below it are rejected
    (``kd3_low_confidence``) even under the budget, so the kept set can shrink or grow back as the
    student learns (kdata's reading of the paper's dynamic selection). A re-selection that keeps no row is one ``KdataError``.

    The pool is never held in memory: each re-selection scores it unit by unit through the per-unit
    score cache (``kdata.scoring.score.score_pool``), the student keyed by a checksum of its current
    weights (``weights_checksum``), so only scores, not payloads, stay in memory while training."""
    if method not in available():
        raise KdataError(f"--reselect-every needs the '{method}' selection method, which is not available")
    the_pool = open_pool(pool)
    t_model = load_model(teacher, device=device)
    work_dir = Path(work_dir)
    score_cfg = ScoreConfig(topk=topk, temperature=temperature, embeddings=False)

    def reselect(student: Model, *, epoch: int, budget: int):
        check_models(t_model, student)
        was = student.module.training
        current = dataclasses.replace(student, spec=f"{student.spec}@epoch{epoch}", checksum=f"training:{epoch}")
        student.module.eval()
        keyed = dataclasses.replace(current, checksum=weights_checksum(student.module))
        opts = {method: {"threshold": threshold}} if threshold is not None else {}
        cfg = SelectConfig(pool=pool, teacher=teacher, student=current.spec, method=method, budget=str(budget),
                           seed=seed, topk=topk, temperature=temperature, method_options=opts)
        prep = Prepared(cfg=cfg, pool=the_pool, teacher=t_model, student=keyed, methods=[method], balance=None,
                        score_cfg=score_cfg, device=device)
        try:
            scored = score(prep)  # unit by unit, cached under these weights
        finally:
            student.module.train(was)
        scores, n_in = scored.scores, scored.info["n_in"]
        cfg = dataclasses.replace(cfg, budget=str(min(budget, scores.num_rows)))
        prep = dataclasses.replace(prep, cfg=cfg, student=current)
        out = work_dir / f"reselect-epoch{epoch:03d}"
        report = finish(prep, Scored(scores=scores, quarantined=scored.quarantined,
                                     info={"n_in": n_in, "units": len(the_pool.units),
                                           "cache_hits": scored.info["cache_hits"]}), out=str(out))
        if not report.counts["kept"]:
            why = (f"--reselect-threshold {threshold}: every row's KD³ confidence is below it; lower it"
                   if threshold is not None else "nothing was kept")
            raise KdataError(f"{out}: the re-selection at epoch {epoch} kept no row of {pool} ({why})")
        dec = pq.read_table(out / "decisions.parquet", columns=["sample_id", "decision"])
        kept_ids = dec.filter(pc.equal(dec.column("decision"), KEPT)).column("sample_id")
        kept = pc.is_in(scores.column("sample_id"), value_set=kept_ids.combine_chunks()).to_numpy(zero_copy_only=False)
        agree = float(np.mean(scores.column("agree").to_numpy(zero_copy_only=False)[kept])) if kept.any() else None
        return out, {"rows": report.counts["kept"], "method": method, "threshold": threshold,
                     "agree_frac_kept": agree}

    return reselect


def default_out(shards: str | Path, *, request: str | None = None) -> Path:
    """Where ``kdata train DIR`` saves without ``--out``: ``DIR-student`` beside DIR (never inside it),
    or ``DIR-student-2``, ``-3``… when that already holds something — unless it is this ``request``
    killed before its student was saved (``resumes``: the same command run again goes on there; another
    command leaves it alone). ``DIR/data`` counts as DIR."""
    p = Path(shards).resolve()
    if p.name == "data" and (p.parent / MANIFEST).is_file():
        p = p.parent
    base = p.parent / f"{p.name}-student"
    out, n = base, 1
    while out.exists() and (not out.is_dir() or any(out.iterdir())) and not (request and resumes(out, request)):
        n += 1
        out = base.with_name(f"{base.name}-{n}")
    return out


STUDENT_FILES = ("train_log.json", "student.pt2", "student.pt", "student.json", "model.safetensors", "config.json")


def enclosing_dataset(target: Path) -> Path | None:
    """``target`` or the nearest existing directory above it that holds a kdata manifest (one with
    ``kdata_version`` and ``files``), else None: a student written there would sit among files the
    manifest does not list."""
    for d in (target, *target.parents):
        try:
            doc = read_manifest(d)
        except KdataError:  # not readable as a manifest: not a kdata dataset's
            continue
        if doc is not None and "kdata_version" in doc and "files" in doc:
            return d
    return None


def student_dir(shards: str, out: str | None, *, overwrite: bool = False, request: str | None = None) -> str:
    """``out``, or ``DATASET-student`` beside the dataset (``default_out``); never inside the curated
    dataset, whose files its manifest lists, and never over a student already saved in ``out`` unless
    ``overwrite`` (one line naming both, before any work). A run killed before its student was saved in
    full (``kdata.training.checkpoint.unfinished``) is not a saved student: its rerun goes on into ``out``
    (without ``out``, into the default directory a killed run of the same ``request`` left)."""
    target = Path(out).resolve() if out else default_out(shards, request=request)
    if target.is_relative_to(Path(shards).resolve()):
        raise KdataError(f"--out {out}: inside the curated dataset {shards}; save the student beside it "
                         f"(the default: {default_out(shards)})")
    other = enclosing_dataset(target)
    if other is not None:
        raise KdataError(f"--out {out}: {'is' if other == target else 'inside'} the kdata dataset {other} (its "
                         f"manifest lists its files); save the student outside it (the default: {default_out(shards)})")
    held = [n for n in STUDENT_FILES if (target / n).exists()] if target.is_dir() else []
    if held and not overwrite and not unfinished(target):
        raise KdataError(f"--out {out}: already holds a trained student ({held[0]}); choose another directory, "
                         "delete it, or pass --overwrite to replace it")
    if not Path(shards).is_absolute() and target.is_relative_to(Path.cwd()):
        return os.path.relpath(target)
    return str(target)


def train_student(*, shards, student: str, eval: str | None, config: TrainConfig, test: str | None = None,
                  out: str | None = None,
                  pool: str | None = None, teacher: str | None = None, progress=None,
                  verify: bool = True, overwrite: bool = False) -> dict:
    """``kdata train``: distil ``student`` on ``shards``; with ``config.reselect_every``, re-select from ``pool``.

    The student is always saved: to ``out``, or to ``default_out(shards)`` beside the dataset
    (``log["out"]``, with ``log["out_default"]`` true). ``progress(stage, done, total)`` follows the
    epochs. ``verify=False`` skips checking
    ``shards`` against its manifest first (``--no-verify``). A student already in ``out`` is refused
    unless ``overwrite``; OUT is locked for the run, so a second ``kdata train`` into it fails at once.
    A run killed mid-training goes on from its last finished epoch when run again (``run_train``).
    Text shards are one line: they train with ``kdata.training.text.train_text``.
    """
    from kdata.training.source import check_manifest, verify_source
    from kdata.training.text_data import shard_kind

    verify_source(shards) if verify else check_manifest(shards)  # a damaged dataset: one line, before any read
    if (kind := shard_kind(shards)) != "image":
        raise KdataError(f"{shards}: {kind.replace('_', ' ')} text shards train with "
                         "kdata.training.text.train_text (what kdata train calls for text), not train_student")
    factory = None
    if config.reselect_every:
        if not pool or not teacher:
            raise KdataError("--reselect-every needs --pool and --teacher (the pool to re-select from)")

        def factory(model: Model, *, work_dir: Path, device):
            temperature = ShardDataset(shards, input_size=model.input_size, mean=model.mean, std=model.std).temperature
            return make_reselector(pool=pool, teacher=teacher, work_dir=work_dir, seed=config.seed, device=device,
                                   temperature=temperature, threshold=config.reselect_threshold)

    request = request_digest(shards=shards, config=config, student=student, eval=eval, test=test, pool=pool,
                             teacher=teacher)
    target = student_dir(shards, out, overwrite=overwrite, request=request)
    with exclusive(target):
        log = run_train(shards=shards, student=student, eval=eval, test=test, config=config, out=target,
                        request=request,
                        progress=progress,
                        reselector_for=factory, verify=verify,
                        resume_key={"pool": pool, "teacher": teacher} if config.reselect_every else None)
    log["out_default"] = out is None
    return log
