"""Datasets made from a curated dataset: ``kdata dedup`` and ``kdata augment``.

Both read a source dataset, decide per row, and write a new dataset through ``write_output``,
so they get the same manifest, decisions table, data card and ``RunReport`` as ``kdata select``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from kdata.augment.hard import EXCLUDED_FILE, HardConfig, combine, generate, manifest_section, write_excluded
from kdata.core.errors import KdataError, brief
from kdata.core.lock import exclusive
from kdata.core.jsonable import config_hash as hash_config
from kdata.dataset.decisions import build_decisions
from kdata.dataset.schema import KEPT, REJECTED, validate_shard
from kdata.dataset.writer import (MANIFEST, manifest_model, read_manifest, read_shards, require_intact, shard_meta,
                                  shard_paths)
from kdata.dedup.faiss_dedup import check_options, dedup_ranked, embed_images
from kdata.dedup.features import payload_features
from kdata.dedup.text import TEXT_DEFAULTS, collapse_warning, text_embeddings
from kdata.models.spec import load_model, pick_device
from kdata.pipeline.output import Output, RunReport, already_complete, write_output
from kdata.scoring.score import check_models


@dataclass
class Source:
    """A curated dataset read back: its manifest, its rows in rank order, its shard metadata."""

    path: Path
    manifest: dict
    rows: pa.Table
    meta: dict

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


def read_source(shards: str, *, out: str) -> Source:
    """The dataset in ``shards`` (checked: a kdata dataset whose files match its manifest's checksums
    and counts, every shard valid, ids unique)."""
    src = Path(shards)
    if not src.is_dir():
        raise KdataError(f"{shards}: not a directory (expected a curated dataset)")
    manifest = read_manifest(src)
    if manifest is None:
        raise KdataError(f"{shards}: no {MANIFEST}; expected a curated dataset written by kdata")
    if src.resolve() == Path(out).resolve():
        raise KdataError(f"{out}: --out must differ from the dataset directory")
    require_intact(shards, refusal="not deriving from it")  # every checksum and count, as train checks them
    paths = shard_paths(src)
    for p in paths:
        if not p.exists():
            raise KdataError(f"{p}: shard listed in the manifest is missing")
        validate_shard(pq.read_schema(p), where=str(p))
    rows = read_shards(src)
    if "rank" in rows.column_names and rows.column("rank").null_count == 0:
        rows = rows.take(pa.array(np.argsort(rows.column("rank").to_numpy(), kind="stable")))
    ids = rows.column("sample_id").to_pylist()
    if len(set(ids)) != len(ids):
        raise KdataError(f"{shards}: sample ids are not unique")
    return Source(path=src, manifest=manifest, rows=rows, meta=dict(shard_meta(paths[0])) if paths else {})


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


def _rows_per_shard(source: Source) -> int:
    return int((source.manifest.get("config") or {}).get("rows_per_shard") or 10_000)


def dedup_dataset(shards: str, *, out: str, level: str, threshold: float | None = None, frac: float | None = None,
                  seed: int = 0, teacher: str | None = None, device: str = "auto",
                  embedder: str | None = None) -> RunReport:
    """``kdata dedup``: deduplicate a curated dataset into a new one; the better-ranked copy survives.

    Every input row is kept or rejected ``duplicate_of:<id>`` at stage ``dedup``. Semantic dedup
    embeds the images with the source manifest's teacher (or ``teacher``); a text dataset is hashed
    on normalised text and, for near/semantic, embedded with ``embedder`` (``kdata.dedup.text``).
    """
    with exclusive(out):
        t0 = time.perf_counter()
        level = check_options(level, threshold=threshold, frac=frac)
        if level is None:
            raise KdataError("kdata dedup: give --level exact, near or semantic")
        source = read_source(shards, out=out)
        teacher = teacher or manifest_model(source.manifest, "teacher")
        cfg = {"command": "dedup", "shards": str(source.path.resolve()), "source_config_hash": source.identity,
               "dedup": level, "dedup_threshold": threshold, "dedup_frac": frac, "seed": seed,
               "teacher": teacher if level == "semantic" else None}
        table = source.rows
        text = _is_text(table)
        if table.num_rows and not text and ("image" not in table.column_names
                                            or table.column("image").null_count == table.num_rows):
            raise KdataError(f"{shards}: its rows carry no image or text (selected from --scores without --pool), "
                             "so dedup has nothing to compare; select again with --pool to carry the payloads")
        if text:
            cfg.update(teacher=None, embedder=_text_embedder(embedder, level, shards=shards))
        elif embedder:
            raise KdataError(f"--embedder {embedder}: {shards} holds images; sentence embeddings dedup text")
        chash = hash_config(cfg)
        if (done := already_complete(out, chash)) is not None:
            return done
        hashes, pixels = payload_features(table, pixels=level != "exact" and not text)
        emb, defaults = None, {}
        if text and level != "exact":
            emb = pixels = text_embeddings(table.column("text").to_pylist(), embedder, device=pick_device(device))
            defaults = TEXT_DEFAULTS
        elif level == "semantic":
            if not teacher:
                raise KdataError(f"{shards}: the manifest names no teacher; pass --teacher SPEC for semantic dedup")
            if "image" not in table.column_names or table.column("image").null_count:
                raise KdataError(f"{shards}: semantic dedup of shards needs image payloads")
            dev = pick_device(device)
            emb = embed_images(table.column("image").to_pylist(), load_model(teacher, device=dev), device=dev)
        res = dedup_ranked(level=level, hashes=hashes, pixels=pixels, embeddings=emb, threshold=threshold,
                           frac=frac, seed=seed, **defaults)
        if text and level != "exact":
            collapse_warning(res.info, embedder=embedder, frac=frac)
        dup = res.dup_of >= 0
        ids = table.column("sample_id").to_pylist()
        decisions = build_decisions(table, decision=np.where(dup, REJECTED, KEPT),
                                    reason=[f"duplicate_of:{ids[d]}" if d >= 0 else None for d in res.dup_of],
                                    stage=["dedup" if d else None for d in dup])
        kept = table.filter(pa.array(~dup))
        if "rank" in kept.column_names:
            kept = kept.set_column(kept.schema.get_field_index("rank"), "rank",
                                   pa.array(np.arange(kept.num_rows, dtype=np.int32)))
        output = Output(rows=kept, decisions=decisions, config=cfg, config_hash=chash,
                        models=source.manifest.get("models", {}), meta=source.meta,
                        extra={**source.carried(), "dedup": res.info}, rows_per_shard=_rows_per_shard(source),
                        info={"dedup": res.info})
        report = write_output(out, output)
        report.seconds = time.perf_counter() - t0
        return report


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
    with exclusive(out):
        t0 = time.perf_counter()
        source = read_source(shards, out=out)
        tm, sm = (load_model(_manifest_model(source, role, spec), device=device)
                  for role, spec in (("teacher", teacher), ("student", student)))
        check_models(tm, sm)
        _check_source_classes(source, tm.class_names, spec=tm.spec)
        temperature, topk = float(source.manifest.get("temperature", 1.0)), int(source.manifest.get("topk", 5))
        cfg = {"op": "augment", "source": source.identity, "source_files": [f["sha256"] for f in source.manifest["files"]],
               "teacher": tm.checksum, "student": sm.checksum, "critic": critic, "critic_recall": critic_recall,
               "hard": {k: (list(v) if isinstance(v, tuple) else v) for k, v in config.__dict__.items()}}
        chash = hash_config(cfg)
        if (done := already_complete(out, chash)) is not None:
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
