"""Text pools: JSONL files and directories, saved Hugging Face datasets, Parquet with text; quarantine reasons."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kdata.core.errors import KdataError
from kdata.pools.spec import open_pool
from kdata.pools.text import payload_kind, text_problems


def _lines(path, objs, raw=()):
    path.write_bytes(b"\n".join([json.dumps(o).encode() for o in objs] + list(raw)) + b"\n")
    return path


def test_jsonl_rows_ids_fields_and_quarantine_reasons(tmp_path):
    p = _lines(tmp_path / "a.jsonl", [{"id": 7, "text": "hello", "label": "pos", "domain": "web"},
                                      {"text": "no id here"}, {"text": ""}, {"text": 3}, {"label": "x"},
                                      {"text": "x" * 50}],
               raw=[b"", b"{not json", b'{"text": "\xff\xfe"}', b"[1, 2]"])
    pool = open_pool(str(p))
    assert pool.extra["payload"] == "text" and len(pool.units) == 1
    t = pool.units[0].read()
    assert t.num_rows == 9  # the blank line is skipped, every other line is a row
    ids = t.column("sample_id").to_pylist()
    assert ids[:2] == ["7", "a.jsonl:2"] and len(set(ids)) == len(ids)
    assert t.column("label").to_pylist()[0] == "pos" and t.column("domain").to_pylist()[0] == "web"
    why = text_problems(t, max_chars=40)
    assert why[0] is None and why[1] is None
    assert why[2] == "empty_text"
    assert why[3].startswith("undecodable_text:") and "int" in why[3]
    assert why[4].startswith("undecodable_text:") and "no 'text'" in why[4]
    assert why[5] == "too_long: over 40 chars (50 chars)"
    assert why[6].startswith("undecodable_text: not JSON (line 8: ")
    assert why[7].startswith("undecodable_text: not valid UTF-8 (line 9, byte")
    assert why[8].startswith("undecodable_text:") and "list" in why[8]
    assert pool.labels() == ["pos", "x"]


def test_a_byte_order_mark_does_not_cost_the_first_row(tmp_path):
    p = tmp_path / "bom.jsonl"
    p.write_bytes(b"\xef\xbb\xbf" + b'{"id": "a", "text": "first"}\n{"id": "b", "text": "second"}\n')
    t = open_pool(str(p)).units[0].read()
    assert t.column("sample_id").to_pylist() == ["a", "b"] and t.column("text").to_pylist() == ["first", "second"]
    assert text_problems(t, max_chars=100) == [None, None]


def test_jsonl_directory_units_and_fingerprints(tmp_path):
    d = tmp_path / "pool"
    (d / "sub").mkdir(parents=True)
    (d / ".hidden").mkdir()
    _lines(d / "b.jsonl", [{"text": "b"}])
    _lines(d / "sub" / "a.jsonl", [{"text": "a"}, {"text": "aa"}])
    _lines(d / ".hidden" / "c.jsonl", [{"text": "c"}])
    pool = open_pool(str(d))
    assert [u.name for u in pool.units] == ["b.jsonl", "sub/a.jsonl"]
    assert pool.units[1].read().column("sample_id").to_pylist() == ["sub/a.jsonl:1", "sub/a.jsonl:2"]
    before = pool.units[0].fingerprint()
    _lines(d / "b.jsonl", [{"text": "changed"}])
    assert open_pool(str(d)).units[0].fingerprint() != before


def test_parquet_text_pool_and_payload_kind(tmp_path):
    pq.write_table(pa.table({"sample_id": ["x", "y"], "text": ["one", ""]}), tmp_path / "t.parquet")
    pool = open_pool(str(tmp_path / "t.parquet"))
    assert payload_kind(pool) == "text"
    t = pool.units[0].read()
    assert text_problems(t) == [None, "empty_text"]
    assert payload_kind(open_pool("builtin:digits-test")) == "image"


def test_saved_hugging_face_dataset_and_dataset_dict(tmp_path):
    datasets = pytest.importorskip("datasets")
    feats = datasets.Features({"text": datasets.Value("string"),
                               "label": datasets.ClassLabel(names=["neg", "pos"]),
                               "domain": datasets.Value("string")})
    ds = datasets.Dataset.from_dict({"text": ["good", "bad", ""], "label": [1, 0, 1], "domain": ["a", "b", "a"]},
                                    features=feats)
    ds.save_to_disk(str(tmp_path / "one"))
    pool = open_pool(str(tmp_path / "one"))
    t = pool.read_all()
    assert t.column("text").to_pylist() == ["good", "bad", ""]
    assert t.column("label").to_pylist() == ["pos", "neg", "pos"]  # ClassLabel ids → names
    assert text_problems(t) == [None, None, "empty_text"]
    dd = datasets.DatasetDict({"train": ds, "extra": ds.select([0])})
    dd.save_to_disk(str(tmp_path / "two"))
    with pytest.raises(KdataError, match="a DatasetDict with splits train, extra"):  # not merged
        open_pool(str(tmp_path / "two"))
    pool2 = open_pool(str(tmp_path / "two" / "extra"))  # one split: a saved Dataset
    assert len(pool2.units) == 1 and pool2.read_all().column("text").to_pylist() == ["good"]
    assert pool2.read_all().column("label").to_pylist() == ["pos"]


def test_saved_dataset_without_text_is_one_line(tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_dict({"body": ["x"]}).save_to_disk(str(tmp_path / "d"))
    with pytest.raises(KdataError, match="string column 'text'"):
        open_pool(str(tmp_path / "d")).read_all()


@pytest.mark.parametrize("case", ["string ids", "int ids", "no ids", "class labels", "plain fields", "large text",
                                  "float ids", "null id", "bool domain"])
def test_saved_dataset_tables_by_arrow_casts_equal_the_row_by_row_ones(case):
    """A saved dataset's unit becomes the pool table by Arrow casts where that gives exactly the
    row-by-row table (strings, integers, ClassLabel ids), and row by row otherwise."""
    from kdata.pools.text import _hf_table_arrow, _hf_table_rows

    text = pa.array(["a", "b", None, "ünï"], pa.large_string() if case == "large text" else pa.string())
    cols = {"text": text}
    names = None
    if case == "string ids":
        cols["sample_id"] = pa.array(["s0", "s1", "s2", "s3"])
    elif case == "int ids":
        cols["id"] = pa.array([5, -1, 7, 2**40], pa.int64())
    elif case == "class labels":
        cols["label"], names = pa.array([0, 1, None, 5], pa.int32()), ["neg", "pos"]
    elif case == "plain fields":
        cols.update(label=pa.array(["x", None, "y", "z"]), domain=pa.array([1, 2, None, 4], pa.int16()),
                    source=pa.nulls(4, pa.string()))
    elif case == "float ids":
        cols["id"] = pa.array([1.0, 2.5, 3.0, 4.0])
    elif case == "null id":
        cols["id"] = pa.array(["a", None, "c", "d"])
    elif case == "bool domain":
        cols["domain"] = pa.array([True, False, None, True])
    table = pa.table(cols)
    fast = _hf_table_arrow(table, name="train/data.arrow", source="train", names=names)
    if case in ("float ids", "null id", "bool domain"):
        assert fast is None  # Python's str() and Arrow's cast spell these differently: row by row
        return
    assert fast is not None and fast.equals(_hf_table_rows(table, name="train/data.arrow", source="train", names=names))


def test_a_run_refuses_a_jsonl_pool_without_text_before_any_model_loads(tmp_path, capsys):
    """A pool file of the wrong shape is one line, exit 2, nothing written; the check runs before the
    models load (the teacher here has no tokenizer, which would otherwise be the error)."""
    import shutil

    from kdata.cli import main
    from tests.helpers.text_models import text_assets

    d = text_assets()
    notok = tmp_path / "notok"
    notok.mkdir()
    for f in ("config.json", "model.safetensors"):
        shutil.copy(d / "t" / f, notok / f)
    pool = tmp_path / "pool"
    pool.mkdir()
    _lines(pool / "a.jsonl", [{"text": "fine"}, {"body": "this row alone is quarantined"}])
    _lines(pool / "b.jsonl", [{"id": i, "body": f"hello {i}"} for i in range(3)])
    capsys.readouterr()  # building the tiny models prints progress bars
    for teacher in (notok, d / "t"):
        out = tmp_path / f"out-{teacher.name}"
        code = main(["select", "--pool", str(pool), "--teacher", f"hf:{teacher}", "--student", f"hf:{d / 's'}",
                     "--method", "random", "--budget", "1", "--out", str(out)])
        err = capsys.readouterr().err.strip()
        assert code == 2 and not out.exists(), err
        assert err.count("\n") == 0 and "Traceback" not in err
        assert f"{pool / 'b.jsonl'}: no line holds a string 'text' field (first line's keys: id, body)" in err
    (pool / "b.jsonl").unlink()  # only some lines without text: the run goes on, those rows quarantined
    out = tmp_path / "ok"
    assert main(["select", "--pool", str(pool), "--teacher", f"hf:{d / 't'}", "--student", f"hf:{d / 's'}",
                 "--method", "random", "--budget", "1", "--out", str(out), "--json"]) == 0
    counts = json.loads(capsys.readouterr().out)["counts"]
    assert counts["n_in"] == 2 and counts["kept"] == 1 and counts["quarantined"] == 1
