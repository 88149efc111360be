"""A selection's kept rows, their payloads left in the pool until the shard that holds them is written.

``curated_table`` (kdata.pipeline.curate) builds one table of every kept row with its payload; a
selection of half a 0.8 GB pool then peaks at 1.9 GB of RSS. ``CuratedRows`` holds only the
kept rows' scores (rank order, no payload) and, when ``write_shards`` stages it, reads the pool
once, unit by unit, a chunk of kept rows at a time, binning each payload row by output shard
(``kdata.dataset.shard_bins``): memory holds one shard of payloads (plus a chunk and the reader's
batch), whatever the budget. The shards are the bytes ``curated_table`` would give: both paths
join scores and payloads with ``assemble``.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from kdata.core.errors import KdataError
from kdata.core.ids import member_mask
from kdata.dataset.schema import SHARD_SCHEMA, TEXT_LM_COLUMNS, conform
from kdata.dataset.shard_bins import RANK, ShardBins, StagedRows

CHUNK_ROWS = 1024  # kept rows read from a unit per call (at most a shard's worth)


def kept_scores(scores: pa.Table, sel) -> pa.Table:
    """The kept rows of ``scores`` with their rank and method scores, best first (no payload)."""
    keep_idx = np.flatnonzero(sel.kept)
    kept = scores.take(pa.array(keep_idx)).append_column("rank", pa.array(sel.rank[keep_idx], pa.int32()))
    for name, arr in sel.scores.items():
        kept = kept.append_column(name, pa.array(arr[keep_idx], pa.float32()))
    return kept.sort_by("rank")


def assemble(kept: pa.Table, payload: pa.Table) -> pa.Table:
    """Kept score rows joined with their payload rows (same order): the pool columns the scores lack
    appended, ``kind`` filled, conformed to the shard schema (causal-LM rows keep their token columns)."""
    for name in payload.column_names:
        if name not in kept.column_names:
            kept = kept.append_column(name, payload.column(name))
    kind = kept.column("kind")
    if kind.null_count:
        kept = kept.set_column(kept.schema.get_field_index("kind"), "kind", pc.fill_null(kind, "original"))
    return conform(kept, SHARD_SCHEMA, extra=TEXT_LM_COLUMNS)


def missing_ids(spec: str, wanted: pa.Array, found: np.ndarray) -> KdataError:
    """The error for kept ids the pool lacks (``found``: which of ``wanted`` were read)."""
    absent = np.flatnonzero(~found)
    return KdataError(f"{spec}: {len(absent)} kept sample ids are missing from the pool "
                      f"(e.g. '{wanted[int(absent[0])].as_py()}'); the predictions and the pool must name the "
                      "same samples")


class CuratedRows:
    """The kept rows of a selection over ``pool`` as a lazy source for ``write_shards``.

    ``kept`` is ``kept_scores`` (in memory: no payload); ``staged`` reads the payloads."""

    def __init__(self, pool, kept: pa.Table):
        self.pool, self.kept = pool, kept
        self.num_rows = kept.num_rows

    @contextmanager
    def staged(self, scratch, *, rows_per_shard: int):
        """The rows binned by shard (``StagedRows``) after one pass over the pool; files under ``scratch``."""
        bins = ShardBins(scratch, num_rows=self.num_rows, rows_per_shard=rows_per_shard)
        try:
            self._fill(bins, chunk=min(CHUNK_ROWS, rows_per_shard))
            payload = pa.schema([f for f in bins.schema if f.name != RANK])
            schema = assemble(self.kept.slice(0, 0), payload.empty_table()).schema
            yield StagedRows(bins, schema=schema, finish=self._finish)
        finally:
            bins.close()

    def _finish(self, start: int, payload: pa.Table) -> pa.Table:
        return assemble(self.kept.slice(start, payload.num_rows), payload)

    def _fill(self, bins: ShardBins, *, chunk: int) -> None:
        """Read each unit's kept rows (ascending positions, ``chunk`` at a time, one plan per unit) into
        ``bins``; a kept id the pool lacks, or holds twice, is one line naming it."""
        wanted = self.kept.column("sample_id").combine_chunks()
        rank_of = {sid: r for r, sid in enumerate(wanted.to_pylist())}
        found = np.zeros(self.num_rows, bool)
        for unit in self.pool.units:
            plan = unit.plan()
            rows = np.flatnonzero(member_mask(plan.sample_ids(), rank_of).to_numpy(zero_copy_only=False))
            for a in range(0, rows.size, chunk):
                part = plan.take(rows[a:a + chunk])
                ids = part.column("sample_id").to_pylist()
                ranks = np.fromiter((rank_of[i] for i in ids), np.int64, len(ids))
                if found[ranks].any() or len(np.unique(ranks)) != ranks.size:
                    dup = next(i for i, r in zip(ids, ranks) if found[r] or (ranks == r).sum() > 1)
                    raise KdataError(f"{self.pool.spec}: sample_id '{dup}' occurs more than once in the pool; "
                                     "sample ids must be unique")
                found[ranks] = True
                bins.add(part, ranks)
                del part
                pa.default_memory_pool().release_unused()  # the reader's freed batches, not kept for reuse
            del plan
        if not found.all():
            raise missing_ids(self.pool.spec, wanted, found)
