"""Pool ids and label metadata that were accepted but must not be: an empty ``sample_id`` in a
Parquet pool (refused like a null one, naming the file and row); Hugging Face ``ClassLabel``
metadata with a name repeated (every later id silently named the next class), names that are not
strings, ``names`` that is not a list, or metadata that is not JSON of ``datasets``' shape
(silently ignored: ids read as ``"0".."K-1"``). Each is one line naming the file, exit 2, before
any scoring; well-formed metadata reads as before."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kdata.cli import main
from kdata.core.errors import KdataError
from kdata.pools.spec import open_pool
from tests.helpers.real_inputs import digits, png_bytes

N = 12


def _pool(path, *, ids=None, labels=None, hf: bytes | dict | None = None):
    x, y = digits(N)
    cols = {"sample_id": ids or [f"s{i}" for i in range(N)], "image": [png_bytes(x[i]) for i in range(N)],
            "label": pa.array([int(v) for v in y] if labels is None else labels, pa.int64())}
    table = pa.table(cols)
    if hf is not None:
        table = table.replace_schema_metadata({"huggingface": hf if isinstance(hf, bytes) else json.dumps(hf)})
    pq.write_table(table, path)
    return path


def _features(names) -> dict:
    return {"info": {"features": {"image": {"_type": "Image"}, "label": {"_type": "ClassLabel", "names": names}}}}


def _rows(path):
    (unit,) = open_pool(str(path)).units
    return unit.rows()


def test_an_empty_sample_id_is_one_line_naming_the_file_and_row(tmp_path):
    ids = [f"s{i}" for i in range(N)]
    ids[5] = ids[9] = ""
    p = _pool(tmp_path / "pool.parquet", ids=ids)
    with pytest.raises(KdataError, match=r"pool\.parquet: column 'sample_id' row 5: empty id "
                                         r"\(2 empty id\(s\) in all\)"):
        _rows(p)


BAD_META = [
    (_features(["0", "0", "1", "2", "3", "4", "5", "6", "7", "8"]), r"ClassLabel 'label' lists '0' more than once"),
    (_features([1, 2]), r"ClassLabel 'label' has a name that is a number \(1\), not a string"),
    (_features("abc"), r"ClassLabel 'label' has 'names' that are a JSON string, not a list"),
    (b"{bad", r"'huggingface' schema metadata: not readable JSON"),
    (b"[" * 100_000 + b"]" * 100_000, r"'huggingface' schema metadata: not readable JSON"),
    (b"[1]", r"'huggingface' schema metadata is a JSON list, not an object"),
    ({"info": [1]}, r"'info' is a JSON list, not an object"),
    ({"info": {"features": [1]}}, r"'features' must be a JSON object, not a list"),
]


@pytest.mark.parametrize("meta, message", BAD_META)
def test_label_metadata_kdata_cannot_read_faithfully_is_refused(tmp_path, meta, message):
    p = _pool(tmp_path / "pool.parquet", hf=meta)
    with pytest.raises(KdataError, match=message) as exc:
        _rows(p)
    assert str(exc.value).startswith(f"{p}: the 'huggingface' schema metadata") and "\n" not in str(exc.value)


def test_well_formed_or_irrelevant_metadata_reads_as_before(tmp_path):
    names = [f"digit-{i}" for i in range(10)]
    rows = _rows(_pool(tmp_path / "named.parquet", hf=_features(names)))
    _, y = digits(N)
    assert rows.read_rows(0, N).column("label").to_pylist() == [names[int(v)] for v in y]
    no_label = {"info": {"features": {"image": {"_type": "Image"}}}}  # no ClassLabel: ids as strings
    rows = _rows(_pool(tmp_path / "plain.parquet", hf=no_label))
    assert rows.read_rows(0, N).column("label").to_pylist() == [str(int(v)) for v in y]
    # a string label column does not need the names: broken metadata beside it is not read
    x, _ = digits(N)
    table = pa.table({"image": [png_bytes(v) for v in x], "label": [str(int(v)) for v in y]})
    pq.write_table(table.replace_schema_metadata({"huggingface": "{bad"}), tmp_path / "str.parquet")
    assert _rows(tmp_path / "str.parquet").read_rows(0, N).column("label").to_pylist() == [str(int(v)) for v in y]


@pytest.mark.parametrize("kind", ["dup_names", "empty_id"])
def test_cli_select_exits_2_in_one_line_before_scoring(tmp_path, capsys, kind):
    if kind == "dup_names":
        p = _pool(tmp_path / "pool.parquet", hf=_features(["0", "0", "1", "2", "3", "4", "5", "6", "7", "8"]))
    else:
        p = _pool(tmp_path / "pool.parquet", ids=[""] + [f"s{i}" for i in range(1, N)])
    out = tmp_path / "out"
    code = main(["select", "--pool", str(p), "--method", "kd3", "--budget", "0.5", "--device", "cpu",
                 "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and not out.exists()
    assert err.startswith(f"kdata: error: {p}: ") and err.count("\n") == 1


def _saved(path, info_edit):
    datasets = pytest.importorskip("datasets")  # only these tests need it
    ds = datasets.Dataset.from_dict({"text": ["a b c", "d e f"], "label": [0, 1]},
                                    features=datasets.Features({"text": datasets.Value("string"),
                                                                "label": datasets.ClassLabel(names=["neg", "pos"])}))
    ds.save_to_disk(str(path))
    info_path = path / "dataset_info.json"
    info = json.loads(info_path.read_text())
    info_path.write_text(info_edit(info))
    return path


def _set_names(names):
    def edit(info):
        info["features"]["label"]["names"] = names
        return json.dumps(info)
    return edit


@pytest.mark.parametrize("edit, message", [
    (_set_names(["neg", "neg"]), r"dataset_info\.json: the ClassLabel 'label' lists 'neg' more than once"),
    (_set_names([0, 1]), r"dataset_info\.json: the ClassLabel 'label' has a name that is a number"),
    (lambda info: "{bad", r"dataset_info\.json: not readable JSON"),
])
def test_a_saved_dataset_with_unreadable_class_label_names_is_refused(tmp_path, edit, message):
    d = _saved(tmp_path / "ds", edit)
    with pytest.raises(KdataError, match=message):
        for unit in open_pool(str(d)).units:
            unit.read()


def test_a_saved_dataset_with_good_names_reads_them(tmp_path):
    d = _saved(tmp_path / "ds", json.dumps)
    (unit,) = open_pool(str(d)).units
    assert unit.read().column("label").to_pylist() == ["neg", "pos"]
