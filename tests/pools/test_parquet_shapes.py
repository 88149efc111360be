"""Parquet image pools in the shapes other tools write are read, not refused
(``kdata.pools.parquet_shapes``): a Hugging Face ``Image`` struct ``struct<bytes, path>``, integer
``ClassLabel`` labels (named by the file's ``huggingface`` metadata, else the id as a string),
integer sample ids, pandas categories (``dictionary<string>``).

Real files throughout (written by pyarrow, pandas and, when importable, ``datasets``) and the real
CLI with the built-in teacher and student. Every way a unit is read (whole, by range, by
positions, one column alone, the ids) must give the same ids and labels; a row whose image is only
a path is quarantined with that reason and the path is never opened."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kdata.cli import main
from kdata.core.errors import KdataError
from kdata.dataset.decisions import quarantine_kind
from kdata.dataset.schema import READ_ERROR
from kdata.pools.base import PoolLimits
from kdata.pools.parquet_shapes import IMAGE_PATH_ONLY
from kdata.pools.spec import open_pool
from tests.helpers.peak_memory import peak_lines
from tests.helpers.real_inputs import CLASSES, digits, png_bytes

N = 24
IMAGE_STRUCT = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def _hf_meta(names: list[str]) -> dict[bytes, bytes]:
    """The schema metadata ``datasets`` writes for an Image + ClassLabel dataset."""
    return {b"huggingface": json.dumps({"info": {"features": {
        "image": {"_type": "Image"}, "label": {"names": names, "_type": "ClassLabel"}}}}).encode()}


def _digits(n: int = N) -> tuple[list[bytes], list[int]]:
    x, y = digits(n)
    return [png_bytes(a) for a in x], [int(v) for v in y]


def _write(path: Path, table: pa.Table, **kw) -> Path:
    pq.write_table(table, path, **kw)
    return path


def _hf_struct(path: Path, *, path_only: tuple[int, ...] = (3,)) -> Path:
    """``struct<bytes: binary, path: string>`` images (row 3: a path only, naming a real PNG), ClassLabel
    ids with the ``huggingface`` metadata, string ids; small row groups (one dictionary each)."""
    imgs, y = _digits()
    decoy = path.parent / "decoy.png"
    decoy.write_bytes(imgs[0])
    images = [{"bytes": b, "path": f"{i:03d}.png"} for i, b in enumerate(imgs)]
    for i in path_only:
        images[i] = {"bytes": None, "path": str(decoy)}
    t = pa.table({"sample_id": [f"hf-{i}" for i in range(N)], "image": pa.array(images, IMAGE_STRUCT),
                  "label": pa.array(y, pa.int64())})
    return _write(path, t.replace_schema_metadata(_hf_meta(CLASSES)), row_group_size=5)


def _int_labels(path: Path) -> Path:
    imgs, y = _digits()
    return _write(path, pa.table({"image": imgs, "label": pa.array(y, pa.int64())}))


def _int_ids(path: Path) -> Path:
    imgs, y = _digits()
    return _write(path, pa.table({"sample_id": pa.array(range(1000, 1000 + N), pa.int64()), "image": imgs,
                                  "label": [str(v) for v in y]}))


def _categorical(path: Path) -> Path:
    import pandas as pd

    imgs, y = _digits()
    pd.DataFrame({"sample_id": [f"c{i}" for i in range(N)], "image": imgs,
                  "label": pd.Categorical([str(v) for v in y])}).to_parquet(path, row_group_size=7)
    return path


SHAPES = {  # name -> (writer, the column's type as written, expected ids)
    "hf_struct": (_hf_struct, ("image", "struct<bytes: binary, path: string>"), [f"hf-{i}" for i in range(N)]),
    "int_labels": (_int_labels, ("label", "int64"), [f"int_labels.parquet:{i}" for i in range(N)]),
    "int_ids": (_int_ids, ("sample_id", "int64"), [str(1000 + i) for i in range(N)]),
    "categorical": (_categorical, ("label", "dictionary<values=string, indices=int8, ordered=0>"),
                    [f"c{i}" for i in range(N)]),
}


def _every_read(unit) -> dict[str, pa.Table]:
    """The unit's rows read every way the reader offers (the plan shipped to a worker, as scoring does)."""
    plan = pickle.loads(pickle.dumps(unit.plan()))
    n = plan.num_rows
    halves = pa.concat_tables([plan.read_rows(0, n // 2), plan.read_rows(n // 2, n)])
    return {"read": unit.read(), "ranges": halves, "take": unit.take(np.arange(n)),
            "take_ids": unit.take_ids(set(unit.sample_ids().to_pylist()))}


@pytest.mark.parametrize("shape", list(SHAPES))
def test_each_shape_reads_as_strings_the_same_way_on_every_path(tmp_path, shape):
    write, (column, written), ids = SHAPES[shape]
    path = write(tmp_path / f"{shape}.parquet")
    assert str(pq.read_schema(path).field(column).type) == written  # the shape the user's file has
    imgs, y = _digits()
    labels = [CLASSES[v] for v in y]
    pool = open_pool(str(path))
    unit = pool.units[0]
    assert unit.sample_ids().to_pylist() == ids
    assert unit.read_column("sample_id").to_pylist() == ids
    assert unit.read_column("label").to_pylist() == labels  # a path-only row keeps its label
    assert unit.read_column("label").type == pa.string()
    assert pool.labels() == sorted(set(labels))
    for how, table in _every_read(unit).items():
        assert table.schema.field("sample_id").type == pa.string() and table.schema.field("label").type == pa.string()
        assert table.schema.field("image").type == pa.binary(), how
        assert table.column("sample_id").to_pylist() == ids, how
        assert table.column("label").to_pylist() == labels, how
        images = table.column("image").to_pylist()
        errors = table.column(READ_ERROR).to_pylist()
        for i in range(N):
            if shape == "hf_struct" and i == 3:
                assert images[i] is None and errors[i] == IMAGE_PATH_ONLY, how
            else:
                assert images[i] == imgs[i] and errors[i] is None, (how, i)
    # a few positions across row groups read alone: the same rows
    few = unit.take([1, 3, 11, 22])
    assert few.column("sample_id").to_pylist() == [ids[i] for i in (1, 3, 11, 22)]
    assert few.column("label").to_pylist() == [labels[i] for i in (1, 3, 11, 22)]


def test_classlabel_ids_take_the_metadata_names_and_out_of_range_ids_are_quarantined(tmp_path):
    names = ["cat", "dog", "fox"]
    imgs, _ = _digits(6)
    ids = [0, 2, 1, -1, 7, None]  # -1: datasets' "no label"; 7: outside the names
    t = pa.table({"image": imgs, "label": pa.array(ids, pa.int64())}).replace_schema_metadata(_hf_meta(names))
    path = _write(tmp_path / "named.parquet", t, row_group_size=4)
    pool = open_pool(str(path))
    unit = pool.units[0]
    want = ["cat", "fox", "dog", None, None, None]
    assert unit.read_column("label").to_pylist() == want
    assert pool.labels() == ["cat", "dog", "fox"]
    for how, table in _every_read(unit).items():
        assert table.column("label").to_pylist() == want, how
        errors = table.column(READ_ERROR).to_pylist()
        assert errors[:4] == [None] * 4 and errors[5] is None, how
        assert errors[4] == "label: ClassLabel id outside the 3 names of the file's huggingface metadata (id 7)"
        assert quarantine_kind(errors[4]) == "label: ClassLabel id outside the 3 names of the file's huggingface metadata"
    # without the metadata the ids are the labels, as strings
    plain = _write(tmp_path / "plain.parquet", t.replace_schema_metadata(None))
    assert open_pool(str(plain)).read_all().column("label").to_pylist() == ["0", "2", "1", "-1", "7", None]
    assert open_pool(str(plain)).labels() == ["-1", "0", "1", "2", "7"]


def test_other_types_are_still_one_line_naming_the_column(tmp_path):
    imgs, y = _digits(4)
    cases = {"label": pa.array([1.5] * 4, pa.float64()),
             "image": pa.array([{"pixels": 1}] * 4, pa.struct([("pixels", pa.int64())])),
             "sample_id": pa.array([1.5] * 4)}
    for col, bad in cases.items():
        t = pa.table({"image": imgs, "label": [str(v) for v in y]})
        t = t.set_column(t.column_names.index(col), col, bad) if col in t.column_names else t.append_column(col, bad)
        path = _write(tmp_path / f"bad_{col}.parquet", t)
        with pytest.raises(KdataError, match=rf"bad_{col}\.parquet: column '{col}' has type .*, expected"):
            open_pool(str(path)).units[0].plan()


def test_struct_image_bytes_over_the_cap_are_quarantined_with_the_reason(tmp_path):
    imgs, _ = _digits(3)
    big = imgs[1] + bytes(300_000)  # the cap below is 262,144 bytes
    images = pa.array([{"bytes": imgs[0], "path": None}, {"bytes": big, "path": "b.png"}, None], IMAGE_STRUCT)
    path = _write(tmp_path / "capped.parquet", pa.table({"sample_id": ["a", "b", "c"], "image": images}))
    unit = open_pool(str(path), limits=PoolLimits(max_file_mb=0.25)).units[0]
    for table in (unit.read(), unit.plan().read_rows(0, 3), unit.take([1])):
        rows = {r["sample_id"]: r for r in table.to_pylist()}
        assert rows["b"]["image"] is None
        assert rows["b"]["read_error"] == "column 'image': file is over the 0.25 MiB cap per file (--max-file-mb; 0.3 MiB)"
    rows = {r["sample_id"]: r for r in unit.read().to_pylist()}
    assert rows["a"]["image"] == imgs[0] and rows["a"]["read_error"] is None
    assert rows["c"]["image"] is None and rows["c"]["read_error"] is None  # a null struct: no image, as a null binary


@pytest.mark.parametrize("leaf", ["bytes", "path"])
def test_a_dictionary_bomb_inside_an_image_struct_costs_no_memory(tmp_path, leaf):
    """One 1 MiB value as the ``bytes`` (or the ``path``) of 300 struct rows: ~1 MiB on disk, 300 MiB
    decoded. The ``bytes`` leaf is read as a dictionary and its sizes checked before it is expanded
    (refused in one line); the ``path`` leaf is only ever read as a dictionary (the rows read)."""
    n, value = 300, bytes(1 << 20)
    bomb = pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, np.int32)), pa.array([value], pa.binary()))
    small = pa.array([png_bytes(digits(1)[0][0])] * n, pa.binary())
    kids = [bomb, pa.nulls(n, pa.string())] if leaf == "bytes" else [small, bomb.cast(pa.dictionary(pa.int32(),
                                                                                                    pa.string()))]
    images = pa.StructArray.from_arrays(kids, names=["bytes", "path"])
    path = _write(tmp_path / "bomb.parquet", pa.table({"sample_id": [f"s{i}" for i in range(n)], "image": images}),
                  compression="zstd", store_schema=False, dictionary_pagesize_limit=1 << 24)
    assert path.stat().st_size < 1_000_000
    lines = peak_lines(path, "    unit.plan()\n    print('read', unit.read().num_rows, unit.take([0, 299]).num_rows, "
                             "len(unit.read_column('image')))")
    if leaf == "bytes":
        assert lines[0].startswith("refused") and "bomb.parquet: Parquet rows decode to over" in lines[0], lines
    else:
        assert lines[0] == f"read {n} 2 {n}", lines
    assert int(lines[-1]) < 64, f"peak RSS grew by {lines[-1]} MiB"


def _select(pool: Path, out: Path) -> int:
    return main(["select", "--pool", str(pool), "--method", "kd3", "--budget", "0.5", "--out", str(out), "--quiet"])


def _check_run(out: Path, ids: list[str], labels: dict[str, str], quarantined: dict[str, str]) -> None:
    """decisions account for every id, as strings, with the string labels; the shards carry them too."""
    dec = pq.read_table(out / "decisions.parquet")
    assert dec.schema.field("sample_id").type == pa.string() and dec.schema.field("label").type == pa.string()
    rows = {r["sample_id"]: r for r in dec.to_pylist()}
    assert sorted(rows) == sorted(ids) and dec.num_rows == len(ids)
    counts = {d: sum(r["decision"] == d for r in rows.values()) for d in ("kept", "rejected", "quarantined")}
    assert sum(counts.values()) == len(ids) and counts["kept"] > 0
    assert {i for i, r in rows.items() if r["decision"] == "quarantined"} == set(quarantined)
    for i, why in quarantined.items():
        assert rows[i]["reason"] == "unreadable" and rows[i]["error"] == why
    for i, r in rows.items():
        assert r["label"] == labels[i], i
    manifest = json.loads((out / "manifest.json").read_text())
    c = manifest["counts"]
    assert (c["n_in"], c["kept"], c["rejected"], c["quarantined"]) == (len(ids), counts["kept"], counts["rejected"],
                                                                       counts["quarantined"])
    if quarantined:
        assert c["quarantined_by_reason"] == {quarantine_kind(w): n for w, n in
                                              zip(*np.unique(list(quarantined.values()), return_counts=True))}
    shards = pa.concat_tables([pq.read_table(out / f["path"]) for f in manifest["files"]])
    assert shards.schema.field("sample_id").type == pa.string() and shards.schema.field("label").type == pa.string()
    kept = {i for i, r in rows.items() if r["decision"] == "kept"}
    assert set(shards.column("sample_id").to_pylist()) == kept
    for s in shards.select(["sample_id", "label"]).to_pylist():
        assert s["label"] == labels[s["sample_id"]]
    assert shards.column("image").null_count == 0


@pytest.mark.parametrize("shape", list(SHAPES))
def test_select_runs_on_each_shape_with_string_ids_and_labels(tmp_path, shape):
    write, _, ids = SHAPES[shape]
    path = write(tmp_path / f"{shape}.parquet")
    _, y = _digits()
    assert _select(path, tmp_path / "out") == 0
    quarantined = {ids[3]: IMAGE_PATH_ONLY} if shape == "hf_struct" else {}
    _check_run(tmp_path / "out", ids, {i: CLASSES[v] for i, v in zip(ids, y)}, quarantined)


def test_select_on_a_pool_written_by_datasets(tmp_path):
    datasets = pytest.importorskip("datasets")
    imgs, y = _digits()
    ds = datasets.Dataset.from_dict({"image": [{"bytes": b, "path": None} for b in imgs], "label": y,
                                     "sample_id": list(range(500, 500 + N))})
    ds = ds.cast_column("image", datasets.Image()).cast_column("label", datasets.ClassLabel(names=CLASSES))
    path = tmp_path / "hf.parquet"
    ds.to_parquet(str(path))
    schema = pq.read_schema(path)
    assert str(schema.field("image").type) == "struct<bytes: binary, path: string>"
    assert pa.types.is_integer(schema.field("label").type) and b"huggingface" in schema.metadata
    ids = [str(500 + i) for i in range(N)]
    unit = open_pool(str(path)).units[0]
    assert unit.sample_ids().to_pylist() == ids and unit.read_column("label").to_pylist() == [CLASSES[v] for v in y]
    assert _select(path, tmp_path / "out") == 0
    _check_run(tmp_path / "out", ids, {i: CLASSES[v] for i, v in zip(ids, y)}, {})
