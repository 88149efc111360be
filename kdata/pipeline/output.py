"""The one way a dataset is written: shards, decisions, extra files, data card + report.html, manifest — atomically.

Every command that produces a dataset (``select``, ``demo``, ``dedup``, ``augment``, the trainer's
re-selection, the flows, the benchmarks) ends here, so every output has the same manifest,
decisions table, card and ``RunReport``.
"""

from __future__ import annotations

import errno
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import pyarrow as pa

from kdata.core.atomic import write_json
from kdata.core.errors import KdataError, RuntimeFailure
from kdata.core.jsonable import jsonable
from kdata.core.version import __version__
from kdata.dataset.decisions import Decisions
from kdata.dataset.schema import SCHEMA_VERSION
from kdata.dataset.writer import (MANIFEST, Staging, build_manifest, check_output_dir, extra_file_entries,
                                  read_manifest, write_decisions, write_shards)
from kdata.pipeline.rerun import embedder_model, record_models_from_out, record_pool_from_out, record_pool_state
from kdata.report.card import card_entry, publish, write_card
from kdata.training.budget import kd_weight_entry

TEXT_KINDS = ("causal_lm", "classifier")  # scored as text: the text trainer's α is fixed (no ``kd_weight``)


@dataclass
class RunReport:
    """What a run did: where, the counts (n_in == kept + rejected + quarantined), the files, the time."""

    out: str
    counts: dict
    files: list[dict]
    seconds: float
    status: str = "written"  # or "already complete"
    info: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Output:
    """Everything a dataset holds, handed to ``write_output``."""

    # the curated rows (shard schema), best first: a table, or a source ``write_shards`` reads a shard
    # at a time (``ShardRows``, ``CuratedRows``), so a dataset is written without holding its payloads
    rows: pa.Table | Any
    decisions: pa.Table  # one row per input sample
    config: dict  # what defines the output (hashed)
    config_hash: str
    models: dict  # {"teacher": describe(), "student": describe()}
    meta: dict  # Arrow schema metadata of every shard (temperature, topk, class_names, teacher, student…)
    extra: dict = field(default_factory=dict)  # further manifest keys
    # name → writer(path): files beside the shards (excluded*.parquet), checksummed in manifest["extra_files"]
    extra_files: dict[str, Callable[[Path], None]] = field(default_factory=dict)
    rows_per_shard: int = 10_000
    row_group_rows: int = 1_000
    pool: object = None  # for the card's examples
    info: dict = field(default_factory=dict)  # RunReport.info


def check_out_outside_pool(out: str | Path, pool: str | None) -> None:
    """Refuse an OUT at or inside a pool directory: the next run over that pool would read the
    curated shards and decisions as pool files (one line, before any work)."""
    if not pool or not Path(pool).is_dir():
        return
    root, target = Path(pool).resolve(), Path(out).resolve()
    if target == root or root in target.parents:
        raise KdataError(f"{out}: --out lies inside the pool {pool}; a later run over that pool would read "
                         "the curated files as pool files — choose a directory outside it")


def already_complete(out: str | Path, config_hash: str, *, config: dict | None = None) -> RunReport | None:
    """The report of a finished identical run in ``out``, or None when ``out`` must be written.

    The run is verified first (``check_output_dir``: shards, decisions table and the recorded extra
    files); a damaged one is an error naming the first problem, never reported complete."""
    if check_output_dir(out, config_hash=config_hash, config=config) != "done":
        return None
    m = read_manifest(out)
    return RunReport(out=str(out), counts=m["counts"], files=m["files"], seconds=0.0, status="already complete",
                     info={k: m[k] for k in ("methods", "balance", "dedup", "hard", "budget_rows") if k in m
                           and (k != "budget_rows" or "budget" in (m.get("config") or {}))})  # a selection's own budget


def write_output(out: str | Path, output: Output, *, progress=None, before_commit=None) -> RunReport:
    """Write ``output`` to ``out`` through a staging directory renamed into place at the end.

    The counts are re-derived from the decisions table and checked (n_in == kept + rejected +
    quarantined; kept == the non-generated rows written). ``before_commit(staging_path)`` runs
    after everything is written and before the rename (the flows' crash tests use it).
    """
    t0 = time.perf_counter()
    counts = {**Decisions(output.decisions).counts, **_generated_counts(output.extra)}
    expected = counts["kept"] + counts.get("generated_kept", 0)
    if output.rows.num_rows != expected:
        raise RuntimeError(f"accounting broken: {counts['kept']} kept + {counts.get('generated_kept', 0)} generated "
                           f"in the decisions, {output.rows.num_rows} rows to write")
    meta = {"schema_version": SCHEMA_VERSION, "kdata_version": __version__, "config_hash": output.config_hash,
            **output.meta}
    _step(progress, 0)
    staging = Staging(out)
    try:
        files = write_shards(output.rows, staging.path, meta=meta, rows_per_shard=output.rows_per_shard,
                             row_group_rows=output.row_group_rows)
        decisions = write_decisions(output.decisions, staging.path / "decisions.parquet")
        for name, writer in output.extra_files.items():
            writer(staging.path / name)
        manifest = build_manifest(files=files, config=jsonable(output.config), config_hash=output.config_hash,
                                  models=with_embedder(output.models, output.extra), counts=counts,
                                  extra=jsonable(output.extra), decisions=decisions,
                                  extra_files=extra_file_entries(staging.path, output.extra_files))
        record_models_from_out(manifest.get("models"), out=out)
        if (manifest.get("scoring") or {}).get("kind") not in TEXT_KINDS and not manifest.get("generate"):
            manifest["kd_weight"] = kd_weight_entry(manifest, path=Path(out) / MANIFEST)  # for trainers of one's own
        if output.pool is not None:  # what a rerun compares before answering "already complete"
            if not isinstance(manifest.get("pool"), dict):
                manifest["pool"] = {}
            record_pool_state(manifest["pool"], output.pool, config=manifest["config"])
            record_pool_from_out(manifest["pool"], manifest["config"].get("pool"), out=out)
        _step(progress, 1)
        # the card, its plots and report.html, recorded with their checksums in manifest["card"]
        manifest["card"] = card_entry(write_card(staging.path, manifest=manifest, name=Path(out).resolve().name,
                                                 pool=output.pool))
        _step(progress, 2)
        write_json(staging.path / MANIFEST, manifest)
        if before_commit is not None:
            before_commit(staging.path)
        staging.commit()
        _step(progress, 3)
    except OSError as exc:
        staging.abort()
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise RuntimeFailure(f"{out}: no space left on device while writing the dataset; nothing was "
                                 "written (free space and rerun)") from None
        raise
    except BaseException:
        staging.abort()
        raise
    return RunReport(out=str(out), counts=counts, files=files, seconds=time.perf_counter() - t0,
                     info=jsonable(output.info))


def with_embedder(models: dict, extra: dict) -> dict:
    """``models`` plus the sentence embedder the run's dedup used (``method_info.dedup.embedder``) with its
    checksum, so a rerun refuses an embedder replaced in place as it refuses a replaced teacher."""
    info = (extra.get("method_info") or {}) if isinstance(extra.get("method_info"), dict) else {}
    spec = (info.get("dedup") or {}).get("embedder") if isinstance(info.get("dedup"), dict) else None
    if not isinstance(spec, str) or "embedder" in models:
        return models
    return {**models, **embedder_model(spec)}


def publish_card(report: RunReport, card_dir: str | None) -> RunReport:
    """Copy the data card to ``card_dir`` (a catalogue of cards) when asked."""
    if card_dir:
        report.info["card"] = str(publish(report.out, card_dir))
    return report


def _generated_counts(extra: dict) -> dict:
    hard = extra.get("hard") or {}
    return dict(hard.get("counts") or {})


def _step(progress, done: int) -> None:
    if progress:
        progress("writing", done, 3)
