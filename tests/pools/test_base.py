"""Range-addressable unit plans (``PoolUnit.plan``): every reader's ``read_rows(start, stop)`` gives the
rows its ``read()`` gives, from a small picklable plan, and refuses bad input when the plan is made."""

from __future__ import annotations

import io
import pickle
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kdata.core.errors import KdataError
from kdata.pools.base import PoolLimits, PoolUnit, TableRows
from kdata.pools.readers import open_image_folder
from kdata.pools.spec import open_pool
from kdata.pools.tar import open_tar
from tests.helpers.real_inputs import digits, make_image_folder, make_tar, png_bytes


def _same_rows(unit: PoolUnit, ranges) -> None:
    whole = unit.read()
    assert unit.sample_ids().equals(whole.column("sample_id").combine_chunks())
    plan = pickle.loads(pickle.dumps(unit.plan()))  # what a worker gets
    assert plan.num_rows == whole.num_rows
    for a, b in ranges:
        part = pickle.loads(pickle.dumps(plan.part(a, b)))
        assert part.read_rows(a, b).equals(whole.slice(a, b - a)), (a, b)


def test_folder_rows(tmp_path):
    root = make_image_folder(tmp_path / "pool", n=20, corrupt=True)
    (root / "3" / "fifo.png").unlink(missing_ok=True)
    unit = open_image_folder(str(root), unit_files=50).units[0]
    _same_rows(unit, [(0, 23), (0, 5), (5, 16), (22, 23), (7, 7)])
    ids = unit.sample_ids()
    for f in root.rglob("*.png"):  # an image folder's ids come from its listing: no file is read
        f.unlink()
    assert unit.sample_ids().equals(ids) and len(ids) == 23


def test_tar_rows_read_members_by_offset(tmp_path):
    x, y = digits(12)
    samples = [(f"s{i:02d}", str(y[i]), png_bytes(x[i])) for i in range(12)] + [("nolabel", None, png_bytes(x[0]))]
    tar = make_tar(tmp_path / "pool.tar", samples)
    with tarfile.open(tar, "a") as tf:  # a member over a 1 KiB cap: that sample is kept with the reason
        info = tarfile.TarInfo("big.png")
        info.size = 4096
        tf.addfile(info, io.BytesIO(b"\0" * 4096))
    unit = open_tar(str(tar), limits=PoolLimits(max_file_mb=1 / 1024)).units[0]
    _same_rows(unit, [(0, 14), (3, 9), (12, 14)])
    t = unit.read_rows(12, 14)
    assert t.column("sample_id").to_pylist() == ["nolabel", "big"] and t.column("label").to_pylist() == [None, None]
    assert t.column("read_error")[1].as_py().startswith("tar file is over the ") and "member big.png" in t.column("read_error")[1].as_py()
    plan = unit.plan()
    tar.unlink()  # ids come from the headers read when the plan was made: the shard is not opened again
    assert plan.sample_ids().to_pylist() == [f"s{i:02d}" for i in range(12)] + ["nolabel", "big"]
    with pytest.raises(KdataError, match="cannot read tar shard"):
        plan.read_rows(0, 1)


def test_tar_duplicate_key_is_refused_when_the_plan_is_made(tmp_path):
    tar = make_tar(tmp_path / "dup.tar", [("a", "1", b"x"), ("a", "2", b"y")])
    with pytest.raises(KdataError, match="key 'a' occurs twice"):
        open_tar(str(tar)).units[0].plan()


def test_parquet_rows_span_row_groups_and_name_id_less_rows(tmp_path):
    x, y = digits(30)
    path = tmp_path / "pool.parquet"
    pq.write_table(pa.table({"image": [png_bytes(a) for a in x], "label": [str(v) for v in y]}), path,
                   row_group_size=7)
    unit = open_pool(str(path)).units[0]
    assert len(unit.plan().bounds) == 6  # five row groups
    _same_rows(unit, [(0, 30), (5, 16), (14, 21), (29, 30), (0, 0)])
    assert unit.read_rows(8, 10).column("sample_id").to_pylist() == ["pool.parquet:8", "pool.parquet:9"]


def test_parquet_ids_come_from_the_id_column_alone(tmp_path):
    x, _ = digits(40)
    path = tmp_path / "pool.parquet"
    ids = [f"img-{i:03d}" for i in range(40)]
    pq.write_table(pa.table({"sample_id": ids, "image": [png_bytes(a) for a in x]}), path,
                   compression="none", column_encoding={"image": "PLAIN"}, use_dictionary=False)
    unit = open_pool(str(path)).units[0]
    _same_rows(unit, [(0, 40)])
    meta = pq.read_metadata(path).row_group(0)
    image = next(meta.column(c) for c in range(meta.num_columns) if meta.column(c).path_in_schema == "image")
    data = bytearray(path.read_bytes())  # damage the image column's pages: reading payloads now fails
    middle = image.data_page_offset + image.total_compressed_size // 2
    data[middle - 1024:middle + 1024] = b"\xff" * 2048  # spans length prefixes: each PNG is under 1 KiB
    path.write_bytes(bytes(data))
    plan = open_pool(str(path)).units[0].plan()
    assert plan.sample_ids().to_pylist() == ids
    assert pickle.loads(pickle.dumps(plan)).sample_ids().to_pylist() == ids  # a shipped plan reads the column again
    with pytest.raises(pa.ArrowInvalid):
        pq.read_table(path, columns=["image"])


def test_parquet_plan_checks_ids_and_footer_up_front(tmp_path):
    bad = tmp_path / "nullid.parquet"
    pq.write_table(pa.table({"sample_id": ["a", None], "image": [b"x", b"y"]}), bad)
    with pytest.raises(KdataError, match="nullid.parquet: column 'sample_id' row 1: null id"):
        open_pool(str(bad)).units[0].plan()
    junk = tmp_path / "junk.parquet"
    junk.write_bytes(b"not parquet")
    with pytest.raises(KdataError, match="junk.parquet: cannot read Parquet"):
        open_pool(str(junk)).units[0].plan()


def test_default_plan_ships_only_the_task_rows():
    table = pa.table({"sample_id": [f"r{i}" for i in range(100)], "image": [bytes([i]) * 1000 for i in range(100)]})
    unit = PoolUnit(name="mem", read=lambda: table, fingerprint=lambda: "x")
    plan = unit.plan()
    assert isinstance(plan, TableRows) and plan.read_rows(10, 12).equals(table.slice(10, 2))
    part = plan.part(10, 20)
    assert len(pickle.dumps(part)) < 20_000 and part.read_rows(12, 14).equals(table.slice(12, 2))
