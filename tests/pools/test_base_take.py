"""Reading a few rows of a unit (``PoolUnit.take`` / ``take_ids`` / ``read_column``): the same rows as
``read()`` gives, without reading the payloads of the others — a Parquet file's other row groups,
a folder's other files, a tar shard's other members."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kdata.core.errors import KdataError
from kdata.pools.base import PoolUnit, TableRows
from kdata.pools.readers import open_image_folder
from kdata.pools.spec import open_pool
from kdata.pools.tar import open_tar
from tests.helpers.real_inputs import digits, make_image_folder, make_tar, png_bytes


def _same(unit: PoolUnit, rows) -> None:
    whole = unit.read()
    got = unit.take(rows)
    assert got.equals(whole.take(pa.array(rows, pa.int64()))), rows
    ids = set(whole.column("sample_id").take(pa.array(rows, pa.int64())).to_pylist())
    assert unit.take_ids(ids).equals(got)


def _parquet(path, n=30, *, ids=True, group=10):
    x, y = digits(n)
    t = {"image": [png_bytes(x[i]) for i in range(n)], "label": [str(v) for v in y[:n]],
         "domain": [f"d{i % 3}" for i in range(n)]}
    if ids:
        t = {"sample_id": [f"s{i:03d}" for i in range(n)], **t}
    pq.write_table(pa.table(t), path, row_group_size=group, compression="NONE")
    return path


def test_parquet_take_matches_read_and_names_id_less_rows(tmp_path):
    unit = open_pool(str(_parquet(tmp_path / "a.parquet"))).units[0]
    for rows in ([0, 1, 2], [3, 17, 18, 29], [29], [], list(range(30))):
        _same(unit, rows)
    bare = open_pool(str(_parquet(tmp_path / "b.parquet", ids=False))).units[0]
    _same(bare, [2, 11, 25])
    assert bare.take([2, 25]).column("sample_id").to_pylist() == ["b.parquet:2", "b.parquet:25"]
    assert unit.read_column("domain").to_pylist() == [f"d{i % 3}" for i in range(30)]
    assert unit.read_column("text") is None  # not in the file
    assert unit.read_column("parent_id") is None


def test_parquet_take_reads_only_the_row_groups_it_needs(tmp_path):
    path = _parquet(tmp_path / "a.parquet")
    meta = pq.read_metadata(path)
    col = meta.row_group(1).column(meta.schema.to_arrow_schema().get_field_index("image"))
    start = col.dictionary_page_offset or col.data_page_offset
    with open(path, "r+b") as fh:  # wreck row group 1's image chunk: reading it must fail
        fh.seek(start)
        fh.write(b"\xff" * col.total_compressed_size)
    unit = open_pool(str(path)).units[0]
    got = unit.take([0, 5, 25])
    assert got.column("sample_id").to_pylist() == ["s000", "s005", "s025"]
    assert got.column("image").null_count == 0
    for wrecked in (lambda: unit.take([12]), unit.read):  # the wrecked group is read only when asked for
        with pytest.raises(KdataError, match="a.parquet"):
            wrecked()


def test_folder_take_reads_only_its_files(tmp_path):
    root = make_image_folder(tmp_path / "pool", n=20)
    unit = open_image_folder(str(root), unit_files=50).units[0]
    ids = unit.sample_ids().to_pylist()
    _same(unit, [0, 4, 5, 19])
    (root / ids[7]).unlink()  # gone after listing: a row of read(), never of a take without it
    assert unit.read().column("read_error").null_count == len(ids) - 1
    assert unit.take([6, 8]).column("read_error").null_count == 2


def test_tar_take_reads_members_by_offset(tmp_path):
    x, y = digits(12)
    tar = make_tar(tmp_path / "pool.tar", [(f"s{i:02d}", str(y[i]), png_bytes(x[i])) for i in range(12)])
    unit = open_tar(str(tar)).units[0]
    _same(unit, [0, 3, 4, 11])


def test_in_memory_units_take_by_position():
    t = pa.table({"sample_id": ["a", "b", "c", "d"], "v": [1, 2, 3, 4]})
    assert TableRows(t).take(np.array([1, 3])).column("v").to_pylist() == [2, 4]
    unit = PoolUnit(name="m", read=lambda: t, fingerprint=lambda: "x")
    assert unit.take_ids({"d", "a", "zz"}).column("sample_id").to_pylist() == ["a", "d"]
    assert unit.read_column("v").to_pylist() == [1, 2, 3, 4] and unit.read_column("w") is None


def test_one_huge_row_group_is_streamed_not_read_whole(tmp_path, monkeypatch):
    """Writers' defaults put up to a million rows in one row group: rows are decoded batch by batch
    as pages are reached, so a few early rows never touch the end of the group (wrecked here)."""
    import os

    from kdata.pools import parquet_rows

    monkeypatch.setattr(parquet_rows, "STREAM_BYTES", 64 << 10)  # ~30 rows of 2 KiB per batch (64 at least)
    n = 2000
    path = tmp_path / "one_group.parquet"
    pq.write_table(pa.table({"sample_id": [f"s{i:04d}" for i in range(n)],
                             "image": [os.urandom(2048) for _ in range(n)]}),
                   path, compression="NONE", data_page_size=16 << 10, write_batch_size=8)
    meta = pq.read_metadata(path)
    assert meta.num_row_groups == 1
    col = meta.row_group(0).column(1)
    assert col.path_in_schema == "image"
    start = col.dictionary_page_offset or col.data_page_offset
    with open(path, "r+b") as fh:  # wreck the last 30% of the image pages
        fh.seek(start + int(col.total_compressed_size * 0.7))
        fh.write(b"\xff" * int(col.total_compressed_size * 0.3))
    unit = open_pool(str(path)).units[0]
    got = unit.take([0, 10, 100, 700])
    assert got.column("sample_id").to_pylist() == ["s0000", "s0010", "s0100", "s0700"]
    assert unit.read_rows(64, 200).num_rows == 136
    for wrecked in (lambda: unit.take([1990]), unit.read):
        with pytest.raises(KdataError, match="one_group.parquet: cannot read Parquet"):
            wrecked()
    assert unit.take([5]).column("sample_id").to_pylist() == ["s0005"]  # the cursor recovers


def test_folder_and_tar_columns_without_payloads_read_no_file(tmp_path):
    root = make_image_folder(tmp_path / "pool", n=12)
    unit = open_image_folder(str(root), unit_files=50).units[0]
    whole = unit.read()
    for f in root.rglob("*.png"):  # columns other than the image come from the listing
        f.write_bytes(b"")
    for name in ("sample_id", "label", "domain", "text", "source", "kind"):
        assert unit.read_column(name).to_pylist() == whole.column(name).to_pylist(), name
    x, y = digits(6)
    tar = make_tar(tmp_path / "pool.tar", [(f"s{i}", str(y[i]), png_bytes(x[i])) for i in range(6)])
    tunit = open_tar(str(tar)).units[0]
    assert tunit.read_column("label").to_pylist() == [str(v) for v in y[:6]]
    plan = tunit.plan()
    tar.unlink()
    assert plan.read_column("domain").to_pylist() == [None] * 6  # no member read (the shard is gone)


def test_a_worker_goes_on_reading_where_its_last_task_stopped(tmp_path):
    """Tasks ship a Parquet plan pickled; a process unpickles it as the plan it already reads from
    (its cursor where the last task left it), and as a new plan once the file has changed."""
    import pickle

    path = _parquet(tmp_path / "a.parquet", n=300, group=300)
    plan = open_pool(str(path)).units[0].plan()
    first = pickle.loads(pickle.dumps(plan))
    assert first.read_rows(0, 64).column("sample_id")[0].as_py() == "s000"
    again = pickle.loads(pickle.dumps(plan))
    assert again is first and again.read_rows(64, 128).num_rows == 64
    _parquet(path, n=40, group=40)  # the same path, other contents
    os.utime(path, ns=(1, 1))
    fresh = pickle.loads(pickle.dumps(open_pool(str(path)).units[0].plan()))
    assert fresh is not first and fresh.num_rows == 40


def test_a_dictionary_that_fell_back_to_plain_pages_is_streamed_plain(tmp_path):
    """pyarrow writes a dictionary page for every column and falls back to plain pages once it is
    full: read as a dictionary, Arrow would grow one dictionary of every value in the row group
    (3× the column). Such a column is read plain, a batch at a time (Arrow's peak memory stays a
    few batches, in a fresh process), while a real dictionary bomb is still read as a dictionary."""
    import subprocess
    import sys

    n = 8000
    path = tmp_path / "fallback.parquet"
    pq.write_table(pa.table({"sample_id": [f"s{i:04d}" for i in range(n)],
                             "image": [os.urandom(4096) for _ in range(n)]}), path, compression="NONE")
    code = ("import sys, pyarrow as pa\nfrom kdata.pools import parquet_rows\n"
            "parquet_rows.STREAM_BYTES = 256 << 10\nfrom kdata.pools.spec import open_pool\n"
            "plan = open_pool(sys.argv[1]).units[0].plan()\nt = plan.take([0, 4000, 7999])\n"
            "print(t.num_rows, plan.modes[0], pa.default_memory_pool().max_memory())")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True).stdout
    rows, mode, peak = out.split(" ", 1)[0], out.split(" ", 1)[1].rsplit(" ", 1)[0], int(out.rsplit(" ", 1)[1])
    assert rows == "3" and mode.startswith("((), 6"), out  # no column read as a dictionary; ~64 rows a batch
    assert peak < (n * 4096) // 2, peak  # the column is 32 MiB; its dictionary page (the probe) about 4 MiB
    bomb = tmp_path / "bomb.parquet"  # one 1 MiB value, 300 rows: 300 MiB decoded, over the 256 MiB floor
    pq.write_table(pa.table({"sample_id": [f"s{i}" for i in range(300)], "image": [b"\0" * (1 << 20)] * 300}), bomb,
                   compression="zstd")
    unit = open_pool(str(bomb)).units[0]
    assert unit.take([0]).column("image")[0].as_py() == b"\0" * (1 << 20)  # one row: 1 MiB, fine
    with pytest.raises(KdataError, match="bomb.parquet: Parquet rows decode to over"):
        unit.read()  # all of them: refused from the dictionary's sizes, before expanding
    assert unit.plan()._mode(0)[0] == ("image",)


def test_row_groups_streamed_in_different_modes_and_view_columns_read_as_pyarrow_does(tmp_path):
    """A long value in one row group's dictionary makes that group's column a possible bomb (read as a
    dictionary) while the next group's is read plain: their batches still make one table. String/binary
    view columns (polars' newest Arrow) are read as strings/bytes."""
    texts = ["x" * (1 << 20)] + [f"short {i}" for i in range(599)]
    mixed = tmp_path / "mixed.parquet"
    pq.write_table(pa.table({"sample_id": [f"s{i:03d}" for i in range(600)], "text": texts}), mixed,
                   row_group_size=300)
    plan = open_pool(str(mixed)).units[0].plan()
    got = plan.read_rows(0, 600)
    assert plan.modes[0][0] == ("text",) and plan.modes[1][0] == ()  # 300 rows × 1 MiB could pass the budget
    assert got.column("text").to_pylist() == texts
    assert plan.take([0, 299, 300, 599]).column("text").to_pylist() == [texts[0], texts[299], texts[300], texts[599]]
    views = tmp_path / "views.parquet"
    pq.write_table(pa.table({"sample_id": pa.array([f"v{i}" for i in range(50)], pa.string_view()),
                             "image": pa.array([bytes([i]) * 10 for i in range(50)], pa.binary_view())}), views)
    unit = open_pool(str(views)).units[0]
    assert unit.take([3, 40]).column("image").to_pylist() == [bytes([3]) * 10, bytes([40]) * 10]
    assert unit.read().column("sample_id").to_pylist() == [f"v{i}" for i in range(50)]
