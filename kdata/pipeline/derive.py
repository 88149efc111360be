"""Datasets made from a curated dataset: ``kdata dedup`` and ``kdata augment``.

Both read a source dataset, decide per row, and write a new dataset through ``write_output``,
so they get the same manifest, decisions table, data card and ``RunReport`` as ``kdata select``.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa

from kdata.augment.hard import EXCLUDED_FILE, HardConfig, combine, generate, manifest_section, write_excluded
from kdata.core.errors import KdataError, brief
from kdata.core.lock import exclusive
from kdata.core.jsonable import config_hash as hash_config
from kdata.dataset.decisions import CARRIED, build_decisions
from kdata.dataset.schema import KEPT, REJECTED
from kdata.dataset.shard_rows import ShardColumn, ShardRows, non_null_rows
from kdata.dataset.manifest import curated_manifest
from kdata.dataset.writer import manifest_model, read_shards, require_intact, shard_paths
from kdata.dedup.faiss_dedup import check_options, dedup_ranked, embed_images
from kdata.dedup.features import file_features
from kdata.dedup.text import TEXT_DEFAULTS, collapse_warning, text_embeddings
from kdata.core.device_names import check_device_name
from kdata.models.spec import is_text_spec, load_model, pick_device
from kdata.pipeline.output import Output, RunReport, already_complete, write_output
from kdata.pipeline.rerun import embedder_model
from kdata.pipeline.run import check_same_weights
from kdata.pipeline.source_shards import check_source_shards
from kdata.scoring.score import check_models
from kdata.selection.critic_checks import check_fitted_models, critic_digest, require_image_critic
from kdata.selection.critic_model import load_critic


@dataclass
class Source:
    """A curated dataset read back: its manifest, its rows in rank order (all columns, or those asked
    for), its shard metadata, its shard files and where each row lies in them."""

    path: Path
    manifest: dict
    rows: pa.Table
    meta: dict
    paths: list[Path] = field(default_factory=list)
    order: np.ndarray | None = None  # rows[i] is row order[i] of the shards (rows numbered across the files)

    @property
    def identity(self) -> str:
        return self.manifest.get("config_hash") or hash_config([f["sha256"] for f in self.manifest["files"]])

    def carried(self) -> dict:
        """Manifest keys the derived dataset keeps from its source (class names, soft-label settings)."""
        m = self.manifest
        return {"class_names": m.get("class_names"), "temperature": m.get("temperature"), "topk": m.get("topk"),
                "methods": m.get("methods"), "balance": m.get("balance"), "pool": m.get("pool"),
                "budget_rows": m.get("budget_rows"),
                "source": {"path": str(self.path.resolve()), "config_hash": m.get("config_hash"),
                           "counts": m.get("counts")}}


def read_source(shards: str, *, out: str, columns=None) -> Source:
    """The dataset in ``shards`` (checked: a kdata dataset whose files match its manifest's checksums
    and counts, every shard valid, ids unique); with ``columns``, only those columns are read."""
    src = Path(shards)
    manifest = check_paths(shards, out)
    require_intact(shards, refusal="not deriving from it")  # every checksum and count, as train checks them
    paths = shard_paths(src)
    meta = check_source_shards(paths, class_names=manifest.get("class_names"))  # as kdata train checks them
    rows = read_shards(src, columns=columns)
    order = np.arange(rows.num_rows)
    if "rank" in rows.column_names and rows.column("rank").null_count < rows.num_rows:
        # rank order; unranked rows (HARD's generated rows) after the ranked ones, in shard order
        unranked = rows.column("rank").is_null().to_numpy(zero_copy_only=False)
        rank = np.nan_to_num(rows.column("rank").to_numpy(zero_copy_only=False).astype(np.float64), nan=0.0)
        order = np.lexsort((rank, unranked))  # stable: ties keep their shard order
        rows = rows.take(pa.array(order))
    ids = rows.column("sample_id").to_pylist()
    if len(set(ids)) != len(ids):
        raise KdataError(f"{shards}: sample ids are not unique")
    return Source(path=src, manifest=manifest, rows=rows, meta=meta,
                  paths=paths, order=order)


def check_paths(shards: str, out: str) -> dict:
    """The manifest of the dataset ``shards``, once it is a kdata dataset directory and OUT is neither it
    nor inside it (its files are the dataset's, listed in its manifest, as ``kdata train`` refuses to save
    a student there): one line otherwise, before any work (callers check before taking OUT's lock, whose
    file lands beside OUT)."""
    manifest = curated_manifest(shards)
    src, target = Path(shards).resolve(), Path(out).resolve()
    if target == src:
        raise KdataError(f"{out}: --out must differ from the dataset directory")
    if target.is_relative_to(src):
        raise KdataError(f"{out}: --out lies inside the dataset {shards}; write the new dataset beside it "
                         f"(e.g. {src.parent / (src.name + '-' + target.name)})")
    return manifest


def _manifest_model(source: Source, role: str, spec: str | None) -> str:
    """``spec``, else the model the source dataset was made with (its manifest's ``models``)."""
    spec = spec or manifest_model(source.manifest, role)
    if not spec:
        raise KdataError(f"{source.path}: the manifest names no {role} (a --scores run?); pass --{role} SPEC")
    return spec


def _check_source_classes(source: Source, class_names: list[str], *, spec: str) -> None:
    """The models must predict the classes the dataset's soft labels index (one line otherwise)."""
    have = source.manifest.get("class_names")
    if have and list(have) != list(class_names):
        raise KdataError(f"--teacher {spec}: predicts {len(class_names)} classes ({brief(class_names)}), but "
                         f"{source.path} holds soft labels over {len(have)} ({brief(have)}); "
                         "use the models the dataset was selected with")


def _check_source_teacher(source: Source, teacher) -> None:
    """The teacher must be the one whose soft labels the dataset's rows carry (its manifest's checksum):
    augmenting with another would mix two teachers' labels in one dataset. One line otherwise."""
    spec = manifest_model(source.manifest, "teacher")  # None: bring-your-own predictions, nothing to compare
    recorded = ((source.manifest.get("models") or {}).get("teacher") or {}).get("checksum")
    if spec and recorded and teacher.checksum != recorded:
        raise KdataError(f"--teacher {teacher.spec}: its checksum {str(teacher.checksum)[:19]} differs from the "
                         f"teacher whose soft labels {source.path} holds ({spec}, {str(recorded)[:19]}); augment "
                         "with the dataset's teacher (leave --teacher out), or select again with this one")


def _augment_critic(source: Source, critic: str | None):
    """The fitted critic of ``--critic`` (None: the default critic), after the checks that need no model:
    HARD augments images, so the dataset must hold images and the critic must be an image critic."""
    if _is_text(source.rows) or is_text_spec(manifest_model(source.manifest, "teacher") or ""):
        raise KdataError(f"{source.path}: holds text; kdata augment generates HARD image augmentations and needs "
                         "an image dataset (grow a text dataset with kdata generate)")
    if not critic:
        return None
    crit = load_critic(critic)
    require_image_critic(critic, crit, why="kdata augment (HARD filters generated images)")
    return crit


def _rows_per_shard(source: Source) -> int:
    return int((source.manifest.get("config") or {}).get("rows_per_shard") or 10_000)


# what kdata dedup reads of every row besides the payload features: ids, rank, HARD provenance, labels
DEDUP_COLUMNS = ("sample_id", "rank", "kind", "parent_id", "label", *CARRIED)


def dedup_dataset(shards: str, *, out: str, level: str, threshold: float | None = None, frac: float | None = None,
                  seed: int = 0, teacher: str | None = None, device: str = "auto",
                  embedder: str | None = None, workers: int | str = "auto") -> RunReport:
    """``kdata dedup``: deduplicate a curated dataset into a new one; the better-ranked copy survives.

    Every input row is kept or rejected ``duplicate_of:<id>`` at stage ``dedup``. Semantic dedup
    embeds the images with the source manifest's teacher (or ``teacher``); a text dataset is hashed
    on normalised text and, for near/semantic, embedded with ``embedder`` (``kdata.dedup.text``).
    Memory: the rows' small columns and features (``file_features``), and the payloads of one row
    group at a time — the shards are read a row group at a time, and so are the kept rows written.
    ``workers`` (``auto`` or a count) compute the payload features, a row group per task.
    """
    check_paths(shards, out)  # before the lock, whose file would land inside the dataset
    check_device_name(device)  # an unknown --device at every level; whether it is here, where a model runs
    with exclusive(out):
        t0 = time.perf_counter()
        level = check_options(level, threshold=threshold, frac=frac)
        if level is None:
            raise KdataError("kdata dedup: give --level exact, near or semantic")
        source = read_source(shards, out=out, columns=DEDUP_COLUMNS)
        teacher = teacher or manifest_model(source.manifest, "teacher")
        cfg = {"command": "dedup", "shards": str(source.path.resolve()), "source_config_hash": source.identity,
               "dedup": level, "dedup_threshold": threshold, "dedup_frac": frac, "seed": seed,
               "teacher": teacher if level == "semantic" else None}
        table, n = source.rows, source.rows.num_rows
        images, texts = (non_null_rows(source.paths, c) for c in ("image", "text"))
        text = texts > 0 and not images
        if n and not text and not images:
            raise KdataError(f"{shards}: its rows carry no image or text (selected from --scores without --pool), "
                             "so dedup has nothing to compare; select again with --pool to carry the payloads")
        if text:
            cfg.update(teacher=None, embedder=_text_embedder(embedder, level, shards=shards))
        elif embedder:
            raise KdataError(f"--embedder {embedder}: {shards} holds images; sentence embeddings dedup text")
        chash = hash_config(cfg)
        if (done := already_complete(out, chash, config=cfg)) is not None:
            if cfg.get("embedder"):
                check_same_weights(out, roles=("embedder",))  # an embedder replaced in place: one line
            return done
        at = np.empty(n, np.int64)
        at[source.order] = np.arange(n)  # shard row → rank position
        hashes, pixels = file_features(source.paths, pixels=level != "exact" and not text, at=at,
                                       workers=workers)
        emb, defaults = None, {}
        if text and level != "exact":
            emb = pixels = text_embeddings(ShardColumn(source.paths, "text", source.order), embedder,
                                           device=pick_device(device))
            defaults = TEXT_DEFAULTS
        elif level == "semantic":
            if not teacher:
                raise KdataError(f"{shards}: the manifest names no teacher; pass --teacher SPEC for semantic dedup")
            if images < n:
                raise KdataError(f"{shards}: semantic dedup of shards needs image payloads")
            dev = pick_device(device)
            emb = embed_images(ShardColumn(source.paths, "image", source.order), load_model(teacher, device=dev),
                               device=dev)
        ranked = partial(_ranked_rows, level=level, hashes=hashes, pixels=pixels, embeddings=emb, seed=seed,
                         defaults=defaults)
        reason, info = _dedup_reasons(table, ranked, threshold=threshold, frac=frac)
        if level != "exact":
            collapse_warning(info, embedder=embedder if text else teacher, frac=frac, images=not text)
        gone = np.array([r is not None for r in reason], dtype=bool)
        decisions = build_decisions(table, decision=np.where(gone, REJECTED, KEPT), reason=reason,
                                    stage=["dedup"] * n)  # this dataset's one stage decided every row
        extra = {**source.carried(), "dedup": info, "dedup_level": level, "method_info": {"dedup": info}}
        if (hard := _carried_hard(source.manifest, table, reason)) is not None:
            extra["hard"] = hard
        rows = ShardRows(source.paths, source.order[~gone], replace=_renumbered(table.filter(pa.array(~gone))))
        output = Output(rows=rows, decisions=decisions, config=cfg, config_hash=chash, meta=source.meta, extra=extra,
                        models={**source.manifest.get("models", {}), **embedder_model(cfg.get("embedder"))},
                        rows_per_shard=_rows_per_shard(source), info={"dedup": info})
        report = write_output(out, output)
        report.seconds = time.perf_counter() - t0
        return report


def _dedup_reasons(table: pa.Table, ranked, *, threshold: float | None, frac: float | None
                   ) -> tuple[list[str | None], dict]:
    """Each row's rejection reason (None: kept) and what dedup did; ``ranked(rows, threshold=, frac=)``
    deduplicates the rows ``rows`` (``dedup_ranked`` on their features, in rank order).

    Without HARD rows, one pass: the better-ranked copy survives (``duplicate_of:<id>``). A HARD row is
    derived from its parent (``parent_id``), so with them the originals are deduplicated first, on
    their own; a generated row whose parent went is removed with it (``parent_removed``); the other
    generated rows are then compared with the surviving originals and each other (the threshold
    ``--dedup-frac`` resolved to on the originals), and only they can go in that second pass. So every
    ``duplicate_of`` names a kept row, and no kept row points at a parent outside the dataset.
    """
    ids = table.column("sample_id").to_pylist()
    n = len(ids)
    child, parent = _hard_children(table, ids)
    originals = np.flatnonzero(~child)
    dup, level_of, info = _pass(ranked, originals, n, threshold=threshold, frac=frac)
    reason = [f"duplicate_of:{ids[d]}" if d >= 0 else None for d in dup]
    if not child.any():
        return reason, info
    orphan = child & (dup[np.maximum(parent, 0)] >= 0)
    rest = np.flatnonzero((dup < 0) & ~orphan)
    t = info.get("semantic_threshold")
    dup2, level2, _ = _pass(ranked, rest, n, threshold=threshold if frac is None else t,
                            frac=None if frac is None or t is not None else 0.0)
    for i in np.flatnonzero(child & (dup2 >= 0)):  # second pass: only generated rows can go
        reason[i], level_of[i] = f"duplicate_of:{ids[dup2[i]]}", level2[i]
    for i in np.flatnonzero(orphan):
        reason[i] = "parent_removed"
    info["removed"] = {lv: int(sum(x == lv for x in level_of)) for lv in info["removed"]}
    info.update(n_in=n, kept=sum(r is None for r in reason),
                hard_rows={"generated": int(child.sum()), "parent_removed": int(orphan.sum()),
                           "duplicates": int((child & (dup2 >= 0)).sum())})
    return reason, info


def _ranked_rows(rows: np.ndarray, *, threshold, frac, level: str, hashes: list, pixels, embeddings, seed: int,
                 defaults: dict):
    """``dedup_ranked`` over the rows ``rows`` of the table's features."""
    def pick(a):
        return None if a is None else a[rows]

    return dedup_ranked(level=level, hashes=[hashes[i] for i in rows], pixels=pick(pixels), embeddings=pick(embeddings),
                        threshold=threshold, frac=frac, seed=seed, **defaults)


def _pass(ranked, rows: np.ndarray, n: int, *, threshold, frac) -> tuple[np.ndarray, list, dict]:
    """One dedup pass over ``rows`` (ascending = rank order): ``dup_of`` and the level that removed each
    row, indexed like the whole table (−1 / None outside ``rows``), and the pass's info."""
    res = ranked(rows, threshold=threshold, frac=frac)
    dup, level_of = np.full(n, -1, np.int64), [None] * n
    hit = res.dup_of >= 0
    dup[rows[hit]] = rows[res.dup_of[hit]]
    for i, lv in zip(rows[hit].tolist(), res.level_of[hit].tolist()):
        level_of[i] = lv
    return dup, level_of, res.info


def _hard_children(table: pa.Table, ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Which rows HARD generated from a parent that is in ``table`` too, and that parent's row (−1: none)."""
    n = len(ids)
    if "kind" not in table.column_names or "parent_id" not in table.column_names:
        return np.zeros(n, bool), np.full(n, -1)
    row = {s: i for i, s in enumerate(ids)}
    parent = np.array([row.get(p, -1) if k == "synthetic" and p is not None else -1 for k, p in
                       zip(table.column("kind").to_pylist(), table.column("parent_id").to_pylist())], dtype=np.int64)
    return parent >= 0, parent


def _renumbered(kept: pa.Table) -> dict:
    """The ``rank`` column of the kept rows (``{}`` when they have none): 0, 1, … over the ranked rows,
    in order; unranked rows (HARD's generated rows) stay null. A dataset none of whose rows is ranked
    is ranked in shard order, as it always was."""
    if "rank" not in kept.column_names:
        return {}
    ranked = ~kept.column("rank").is_null().to_numpy(zero_copy_only=False)
    ranked |= not ranked.any()
    rank = np.full(kept.num_rows, -1, np.int32)
    rank[ranked] = np.arange(int(ranked.sum()), dtype=np.int32)
    return {"rank": pa.array(rank, mask=None if ranked.all() else ~ranked)}


def _carried_hard(manifest: dict, table: pa.Table, reason: list[str | None]) -> dict | None:
    """The manifest's ``hard`` section of a dataset deduplicated from one with HARD rows: how they were
    generated (mode, ``param_names`` — the order of ``hard_params`` —, bounds and ranges, config, critic
    and threshold, rates), the generated-row counts of the source (``source_counts``) and the synthetic
    rows as they stand now (``rows``). No ``counts``: that key accounts for rows a run generated, and
    dedup generates none (the synthetic rows it read are inputs, with a decision each)."""
    hard = manifest.get("hard")
    if not isinstance(hard, dict):
        return None
    kinds = table.column("kind").to_pylist() if "kind" in table.column_names else []
    synth = [r for k, r in zip(kinds, reason) if k == "synthetic"]
    by = Counter(r.split(":", 1)[0] for r in synth if r is not None)
    return {**{k: v for k, v in hard.items() if k not in ("counts", "excluded_file", "rows")},
            "source_counts": hard.get("source_counts", hard.get("counts")),
            "rows": {"synthetic": len(synth), "kept": len(synth) - sum(by.values()), "removed": sum(by.values()),
                     "removed_by_reason": dict(sorted(by.items()))}}


def _is_text(table: pa.Table) -> bool:
    """Text rows (a ``text`` payload and no image payload)."""
    has = lambda c: c in table.column_names and table.column(c).null_count < table.num_rows  # noqa: E731
    return has("text") and not has("image")


def _text_embedder(embedder: str | None, level: str, *, shards: str) -> str | None:
    if level == "exact":
        return None
    if not embedder:
        raise KdataError(f"{shards}: --level {level} on text compares sentence embeddings: give --embedder hf:PATH "
                         "(or --level exact)")
    return embedder


def augment_dataset(shards: str, *, teacher: str | None = None, student: str | None = None, out: str,
                    config: HardConfig = HardConfig(), critic: str | None = None, critic_recall: float | None = None,
                    device="cpu") -> RunReport:
    """``kdata augment``: a curated dataset + its accepted HARD rows, written as a new dataset.

    Parents are the non-synthetic rows of ``shards``; every input row is kept (``n_in == kept``)
    and the generated rows are accounted separately under ``hard`` (kdata.augment.hard). The
    models default to the ones the source manifest names, and must predict its classes.
    """
    check_paths(shards, out)  # before the lock, whose file would land inside the dataset
    with exclusive(out):
        t0 = time.perf_counter()
        source = read_source(shards, out=out)
        crit = _augment_critic(source, critic)
        tm, sm = (load_model(_manifest_model(source, role, spec), device=device)
                  for role, spec in (("teacher", teacher), ("student", student)))
        check_models(tm, sm)
        _check_source_classes(source, tm.class_names, spec=tm.spec)
        _check_source_teacher(source, tm)
        if crit is not None:
            check_fitted_models(critic, crit, teacher=tm, student=sm)
        temperature, topk = float(source.manifest.get("temperature", 1.0)), int(source.manifest.get("topk", 5))
        cfg = {"op": "augment", "source": source.identity, "source_files": [f["sha256"] for f in source.manifest["files"]],
               "teacher": tm.checksum, "student": sm.checksum, "critic": critic, "critic_recall": critic_recall,
               "hard": {k: (list(v) if isinstance(v, tuple) else v) for k, v in config.__dict__.items()
                        if k != "batch_size"}}  # throughput only: the rows do not depend on it
        if critic:  # the critic's files, not only its path: a critic refitted in place is another run
            cfg["critic_sha256"] = critic_digest(critic)
        chash = hash_config(cfg)
        if (done := already_complete(out, chash, config=cfg)) is not None:
            return done
        table = source.rows
        kind = table.column("kind").to_pylist() if "kind" in table.column_names else [None] * table.num_rows
        is_parent = np.array([k != "synthetic" for k in kind], dtype=bool)
        result = generate(table.filter(pa.array(is_parent)), tm, sm, config=config, critic=critic,
                          critic_recall=critic_recall, temperature=temperature, topk=topk, device=device,
                          existing_ids=table.column("sample_id").to_pylist())
        n = table.num_rows
        decisions = build_decisions(table, decision=[KEPT] * n, reason=[None] * n, stage=["input"] * n,
                                    class_names=tm.class_names)
        hard = manifest_section(result)
        output = Output(rows=combine(table, result), decisions=decisions, config=cfg, config_hash=chash,
                        models={"teacher": tm.describe(), "student": sm.describe()},
                        meta={"temperature": temperature, "topk": topk, "class_names": tm.class_names,
                              "teacher": tm.spec, "student": sm.spec, "source_config_hash": source.identity},
                        extra={**source.carried(), "class_names": tm.class_names, "hard": hard},
                        extra_files={EXCLUDED_FILE: lambda path: write_excluded(result, path)},
                        rows_per_shard=_rows_per_shard(source), info={"hard": hard})
        report = write_output(out, output)
        report.seconds = time.perf_counter() - t0
        return report
