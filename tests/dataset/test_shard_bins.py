"""``kdata.dataset.shard_bins``: rows arriving in any order, binned by output shard and written back in
rank order with the bytes ``write_shards`` writes for the same rows as one table."""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import pyarrow as pa
import pytest

from kdata.dataset import shard_bins
from kdata.dataset.shard_bins import RANK, ShardBins, StagedRows, gather
from kdata.dataset.writer import SCRATCH_DIR, write_shards


def _rows(n: int) -> pa.Table:
    rng = np.random.default_rng(n)
    return pa.table({"sample_id": [f"s{i:03d}" for i in range(n)],
                     "image": pa.array([rng.bytes(int(rng.integers(5, 80))) if i % 7 else None for i in range(n)],
                                       pa.binary()),
                     "label": [f"c{i % 3}" for i in range(n)],
                     "p": pa.array([rng.random(3).astype(np.float32).tolist() for _ in range(n)],
                                   pa.list_(pa.float32()))})


class Binned:
    """A lazy source as ``write_shards`` takes one: ``table``'s rows handed over in ``arrival`` order
    in pieces of ``piece`` rows, each with its rank."""

    def __init__(self, table: pa.Table, arrival: np.ndarray, piece: int):
        self.table, self.arrival, self.piece, self.num_rows = table, arrival, piece, table.num_rows
        self.scratch_seen = []

    @contextmanager
    def staged(self, scratch, *, rows_per_shard):
        bins = ShardBins(scratch, num_rows=self.num_rows, rows_per_shard=rows_per_shard)
        for a in range(0, len(self.arrival), self.piece):
            ranks = self.arrival[a:a + self.piece]
            bins.add(self.table.take(pa.array(ranks)), ranks)
        self.scratch_seen.append(sorted(p.name for p in scratch.glob("*")) if scratch.exists() else [])
        try:
            yield StagedRows(bins, schema=self.table.schema, finish=lambda start, rows: rows)
        finally:
            bins.close()


@pytest.mark.parametrize("rows_per_shard, open_files", [(1000, 64), (9, 64), (9, 2), (1, 3)])
def test_binned_rows_write_the_table_paths_shards(tmp_path, monkeypatch, rows_per_shard, open_files):
    monkeypatch.setattr(shard_bins, "OPEN_FILES", open_files)  # fewer files than shards: bins of several shards
    table = _rows(50)
    source = Binned(table, np.random.default_rng(0).permutation(50), piece=6)
    meta = {"config_hash": "h"}
    got = write_shards(source, tmp_path / "got", meta=meta, rows_per_shard=rows_per_shard, row_group_rows=4)
    want = write_shards(table, tmp_path / "want", meta=meta, rows_per_shard=rows_per_shard, row_group_rows=4)
    assert got == want
    for f in got:
        assert (tmp_path / "got" / f["path"]).read_bytes() == (tmp_path / "want" / f["path"]).read_bytes()
    assert not (tmp_path / "got" / SCRATCH_DIR).exists()  # the binned files are gone once written
    assert bool(source.scratch_seen[0]) == (rows_per_shard < 50)  # one shard: binned in memory
    if rows_per_shard < 50:  # one file per bin while the rows arrive, however many pieces they come in
        assert len(source.scratch_seen[0]) == min(open_files, -(-50 // rows_per_shard))


def test_gather_takes_rows_across_chunks_in_the_order_asked():
    table = pa.concat_tables([_rows(50).slice(0, 20), _rows(50).slice(20, 30)]).append_column(
        RANK, pa.array(np.arange(50)))
    where = np.array([49, 0, 21, 20, 3, 35])
    got = gather(table, where)
    assert got.equals(table.take(pa.array(where))) and all(c.num_chunks == 1 for c in got.columns)
    assert gather(table, np.zeros(0, np.int64)).num_rows == 0


def test_many_shards_arriving_in_many_pieces_stay_in_few_files(tmp_path, monkeypatch):
    monkeypatch.setattr(shard_bins, "OPEN_FILES", 4)
    table = _rows(400)
    arrival = np.random.default_rng(1).permutation(400)
    bins = ShardBins(tmp_path / "s", num_rows=400, rows_per_shard=10)  # 40 shards in 4 bins of 10
    for a in range(0, 400, 5):  # 80 pieces, each touching up to 5 shards
        bins.add(table.take(pa.array(arrival[a:a + 5])), arrival[a:a + 5])
    assert len(list((tmp_path / "s").iterdir())) == 4
    for shard in (17, 3, 39, 10):
        got = bins.rows(shard)
        ranks = np.sort(got.column(RANK).to_numpy())
        assert ranks.tolist() == list(range(shard * 10, shard * 10 + 10))
        assert got.drop_columns([RANK]).sort_by("sample_id").equals(table.slice(shard * 10, 10))
        bins.drop(shard)
    names = sorted(p.name for p in (tmp_path / "s").iterdir())
    left = sorted({*range(0, 20), *range(30, 40)} - {17, 3, 39, 10})  # bins 0, 1 and 3 split; bin 2 unread
    assert names == ["bin-00002.arrow"] + [f"shard-{s:05d}.arrow" for s in left]
    bins.close()
