"""Parquet pool files of many small row groups: read in runs (a few pyarrow reads, not two per row
group), with the same rows, order and errors as pyarrow's own reading."""

import os
import pickle
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kdata.core.errors import KdataError
from kdata.pools.spec import open_pool


def _pool(path, n=3000, group=10):
    rng = np.random.default_rng(0)
    table = pa.table({"sample_id": [f"s{i:05d}" for i in range(n)],
                      "image": [os.urandom(int(k)) for k in rng.integers(50, 200, n)],
                      "label": [str(i % 7) for i in range(n)]})
    pq.write_table(table, path, row_group_size=group)
    return table


def _reads(fn):
    """(result, how many pyarrow Parquet reads ``fn`` started): real pyarrow, counted by a profile hook."""
    count = [0]

    def hook(frame, event, arg):
        if event == "call" and frame.f_code.co_name in ("iter_batches", "read_row_groups") \
                and frame.f_code.co_filename.endswith(os.path.join("parquet", "core.py")):
            count[0] += 1

    sys.setprofile(hook)
    try:
        out = fn()
    finally:
        sys.setprofile(None)
    return out, count[0]


def _same(got, want):
    for c in ("sample_id", "image", "label")[:len(want.column_names)]:
        assert got.column(c).to_pylist() == want.column(c).to_pylist(), c


def test_many_small_row_groups_are_read_in_a_few_reads_with_the_same_rows(tmp_path):
    path = tmp_path / "tiny_groups.parquet"
    table = _pool(path)
    assert pq.read_metadata(path).num_row_groups == 300
    plan = open_pool(str(path)).units[0].plan()
    got, reads = _reads(lambda: plan.read_rows(0, plan.num_rows))
    _same(got, table)
    assert reads <= 10, reads  # it was two per row group (a dictionary probe and an iterator): 600
    worker = open_pool(str(path)).units[0].plan()
    tasks, reads = _reads(lambda: [pickle.loads(pickle.dumps(worker)).read_rows(s, s + 64) for s in range(0, 3000, 64)])
    _same(pa.concat_tables(tasks), table)
    assert reads <= 20, reads
    rows = np.arange(3, 3000, 7)
    got, reads = _reads(lambda: open_pool(str(path)).units[0].take(rows))
    _same(got, table.take(rows))
    sparse = [5, 1500, 2990]
    got, reads = _reads(lambda: open_pool(str(path)).units[0].take(sparse))
    _same(got, table.take(sparse))


def test_a_damaged_row_group_ahead_fails_only_the_reads_that_need_it(tmp_path):
    path = tmp_path / "damaged.parquet"
    table = _pool(path, n=2000, group=10)
    meta = pq.read_metadata(path).row_group(150)
    col = next(meta.column(i) for i in range(meta.num_columns) if meta.column(i).path_in_schema == "image")
    start = col.dictionary_page_offset or col.data_page_offset
    data = bytearray(path.read_bytes())
    data[start:start + col.total_compressed_size] = b"\xff" * col.total_compressed_size
    path.write_bytes(bytes(data))
    plan = open_pool(str(path)).units[0].plan()
    for s in range(0, 1500, 100):  # a worker's increasing tasks, probing further ahead each time
        _same(plan.read_rows(s, s + 100), table.slice(s, 100))
    with pytest.raises(KdataError, match="damaged.parquet: cannot read Parquet"):
        plan.read_rows(1500, 1510)
    _same(plan.read_rows(1510, 2000), table.slice(1510, 490))
    _same(plan.take([3, 1499, 1511]), table.take([3, 1499, 1511]))


def test_large_row_groups_without_dictionaries_beside_small_ones(tmp_path, monkeypatch):
    """A row group over the small size with no dictionary page (nothing to probe) is streamed alone."""
    path = tmp_path / "plain.parquet"
    table = pa.table({"sample_id": [f"p{i:04d}" for i in range(400)], "image": [os.urandom(3000) for _ in range(400)]})
    with pq.ParquetWriter(path, table.schema, use_dictionary=False, compression="none") as w:
        w.write_table(table.slice(0, 300), row_group_size=300)  # ~900 KB: over 256 KiB / SMALL_GROUPS
        w.write_table(table.slice(300, 100), row_group_size=10)
    from kdata.pools import parquet_rows

    monkeypatch.setattr(parquet_rows, "STREAM_BYTES", 256 << 10)
    plan = open_pool(str(path)).units[0].plan()
    _same(plan.read_rows(0, 400), table)
    _same(plan.take([1, 299, 300, 399]), table.take([1, 299, 300, 399]))
