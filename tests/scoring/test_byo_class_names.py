"""``--scores`` files whose ``kdata`` metadata names the classes: names that do not fit the
predictions (a count other than the logits' C, a string instead of a list, non-string entries, a
name repeated) were dropped for ``"0".."C-1"`` or accepted silently; each is now one line naming
the file, exit 2, before anything is written. Names that fit are kept in the manifest."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kdata.cli import main
from kdata.core.errors import KdataError
from kdata.scoring.byo import load_scores

C = 10


def _scores(path, meta: dict | bytes | None, *, n: int = 40, c: int = C):
    rng = np.random.default_rng(0)
    table = pa.table({"sample_id": [f"s{i}" for i in range(n)],
                      "teacher_logits": list(rng.normal(size=(n, c)).astype(np.float32)),
                      "student_logits": list(rng.normal(size=(n, c)).astype(np.float32))})
    if meta is not None:
        raw = meta if isinstance(meta, bytes) else json.dumps(meta).encode()
        table = table.replace_schema_metadata({"kdata": raw})
    pq.write_table(table, path)
    return path


BAD = [
    ({"class_names": ["a", "b"]}, r"class_names list 2 name\(s\), but the predictions have 10 classes"),
    ({"class_names": "abc"}, r"class_names must be a list of class names, not a JSON string"),
    ({"class_names": {"a": 1}}, r"not a JSON object"),
    ({"class_names": [str(i) for i in range(9)] + [9]}, r"must be non-empty strings; got 9"),
    ({"class_names": [str(i) for i in range(9)] + [""]}, r"must be non-empty strings; got an empty name"),
    ({"class_names": ["a"] * C}, r"class_names list 'a' more than once"),
    ({"class_names": []}, r"class_names list 0 name\(s\)"),
    (b"{not json", r"schema metadata 'kdata' is not valid JSON"),
    (b"[1, 2]", r"schema metadata 'kdata' is not a JSON object"),
    (b"[" * 100_000 + b"]" * 100_000, r"schema metadata 'kdata' is not valid JSON"),
]


@pytest.mark.parametrize("meta, message", BAD)
def test_class_names_that_do_not_fit_are_one_line_naming_the_file(tmp_path, meta, message):
    path = _scores(tmp_path / "preds.parquet", meta)
    with pytest.raises(KdataError, match=message) as exc:
        load_scores(str(path))
    assert str(exc.value).startswith(str(path)) and "\n" not in str(exc.value)


def test_names_that_fit_are_kept_and_no_names_give_indices(tmp_path):
    names = [f"class-{i}" for i in range(C)]
    _, c, got = load_scores(str(_scores(tmp_path / "named.parquet", {"class_names": names})))
    assert (c, got) == (C, names)
    _, c, got = load_scores(str(_scores(tmp_path / "plain.parquet", None)))
    assert (c, got) == (C, [str(i) for i in range(C)])
    _, _, got = load_scores(str(_scores(tmp_path / "other.parquet", {"num_classes": C})))
    assert got == [str(i) for i in range(C)]


def test_cli_refuses_two_names_over_ten_classes_and_writes_nothing(tmp_path, capsys):
    path = _scores(tmp_path / "preds.parquet", {"class_names": ["a", "b"]})
    out = tmp_path / "out"
    code = main(["select", "--scores", str(path), "--method", "kd3", "--budget", "0.5", "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and not out.exists()
    assert err.startswith(f"kdata: error: {path}: ") and err.count("\n") == 1 and "Traceback" not in err


def test_cli_keeps_fitting_names_in_the_manifest(tmp_path, capsys):
    names = [f"c{i}" for i in range(C)]
    path = _scores(tmp_path / "preds.parquet", {"class_names": names})
    out = tmp_path / "out"
    assert main(["select", "--scores", str(path), "--method", "kd3", "--budget", "0.5", "--out", str(out),
                 "--quiet"]) == 0
    assert json.loads((out / "manifest.json").read_text())["class_names"] == names
