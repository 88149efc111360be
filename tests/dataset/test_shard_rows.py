"""``kdata.dataset.shard_rows``: rows of Parquet shards read a row group at a time, written with the
bytes a table of the same rows would be written with, and never reading a row group no row needs."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kdata.core.atomic import write_parquet
from kdata.dataset.shard_rows import ShardColumn, ShardRows, non_null_rows, shard_schema
from kdata.dataset.writer import write_shards
from tests.helpers.damage import wreck_chunks


def _table(lo: int, hi: int, *, text: bool) -> pa.Table:
    rng = np.random.default_rng(lo)
    n = hi - lo
    cols = {"sample_id": pa.array([f"s{i:04d}" for i in range(lo, hi)]),
            "image": pa.array([rng.bytes(int(rng.integers(10, 60))) if i % 5 else None for i in range(n)], pa.binary()),
            "label": pa.array([f"c{i % 3}" for i in range(n)]),
            "teacher_topk_prob": pa.array([rng.random(3).astype(np.float32).tolist() for _ in range(n)],
                                          pa.list_(pa.float32())),
            "rank": pa.array(np.arange(lo, hi, dtype=np.int32))}
    if text:
        cols["text"] = pa.array([None if i % 4 else f"t{i}" for i in range(n)], pa.string())
    return pa.table(cols).replace_schema_metadata({b"kdata": b'{"x": 1}'})


@pytest.fixture
def shards(tmp_path):
    """Two shards of row groups of 4 rows; the second has a ``text`` column the first lacks."""
    paths = [tmp_path / "a.parquet", tmp_path / "b.parquet"]
    pq.write_table(_table(0, 10, text=False), paths[0], row_group_size=4)
    pq.write_table(_table(10, 23, text=True), paths[1], row_group_size=4)
    return paths


def test_shard_rows_write_the_bytes_of_the_same_rows_as_a_table(shards, tmp_path):
    whole = pa.concat_tables([pq.read_table(p) for p in shards], promote_options="default")
    positions = np.array([21, 3, 4, 0, 17, 9, 10, 11, 12, 2, 22])  # any order, across files and row groups
    rank = pa.array(np.arange(len(positions), dtype=np.int32), mask=np.arange(len(positions)) % 3 == 0)
    expected = whole.take(positions)
    expected = expected.set_column(expected.schema.get_field_index("rank"), "rank", rank)
    rows = ShardRows(shards, positions, replace={"rank": rank})
    assert rows.schema == whole.schema.set(whole.schema.get_field_index("rank"), pa.field("rank", pa.int32()))
    assert shard_schema(shards).equals(whole.schema, check_metadata=True)
    assert rows.read().equals(expected) and rows.slice(2, 5).read().equals(expected.slice(2, 5))
    for size in (1, 3, 100):
        write_parquet(tmp_path / "want.parquet", expected, row_group_size=size)
        rows.write_parquet(tmp_path / "got.parquet", row_group_size=size)
        assert (tmp_path / "got.parquet").read_bytes() == (tmp_path / "want.parquet").read_bytes()
    # through write_shards, as write_output calls it: the same shard files as from the table
    meta = {"config_hash": "h"}
    assert write_shards(rows, tmp_path / "s1", meta=meta, rows_per_shard=4, row_group_rows=3) == \
        write_shards(expected, tmp_path / "s2", meta=meta, rows_per_shard=4, row_group_rows=3)
    empty = ShardRows(shards, np.zeros(0, np.int64))
    write_parquet(tmp_path / "want.parquet", whole.slice(0, 0), row_group_size=5)
    empty.write_parquet(tmp_path / "got.parquet", row_group_size=5)
    assert (tmp_path / "got.parquet").read_bytes() == (tmp_path / "want.parquet").read_bytes()


def test_row_groups_no_row_needs_are_never_read(shards, tmp_path):
    wreck_chunks(shards[0], "image", [1])  # rows 4–7
    with pytest.raises(Exception):
        pq.read_table(shards[0])
    rows = ShardRows(shards, [0, 1, 8, 9, 10, 22])
    rows.write_parquet(tmp_path / "out.parquet", row_group_size=2)
    assert pq.read_table(tmp_path / "out.parquet").column("sample_id").to_pylist() == \
        ["s0000", "s0001", "s0008", "s0009", "s0010", "s0022"]
    col = ShardColumn(shards, "text", [3, 14, 20, 10])  # only the text column is read
    assert list(col) == [None, "t4", None, "t0"] and len(col) == 4


def test_non_null_rows_come_from_the_footers_or_the_column(shards, tmp_path):
    plain = tmp_path / "plain.parquet"
    pq.write_table(_table(10, 23, text=True), plain, row_group_size=4, write_statistics=False)
    assert pq.read_metadata(plain).row_group(0).column(1).statistics is None
    want = {c: sum(pq.read_table(p).column(c).drop_null().__len__() for p in shards
                   if c in pq.read_schema(p).names) for c in ("image", "text")}
    assert {c: non_null_rows(shards, c) for c in ("image", "text")} == want
    assert non_null_rows([plain], "text") == non_null_rows([shards[1]], "text") == 4
    assert non_null_rows(shards, "absent") == 0
