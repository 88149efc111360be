"""What a JSONL text pool directory may hold: JSONL beside Parquet is refused (naming a file of each), files
that look like data but are not read (``*.json``, compressed) are refused naming one, ``*.ndjson`` is read."""

from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kdata.core.errors import KdataError
from kdata.pools.spec import open_pool


def _jsonl(path, texts, *, gz: bool = False):
    data = "".join(json.dumps({"text": t}) + "\n" for t in texts).encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def _rows(pool) -> list[str]:
    return [t for u in pool.units for t in u.read().column("text").to_pylist()]


def test_jsonl_beside_parquet_is_refused_naming_a_file_of_each(tmp_path):
    d = tmp_path / "mixed"
    d.mkdir()
    _jsonl(d / "a.jsonl", [f"jsonl row {i}" for i in range(100)])
    pq.write_table(pa.table({"text": [f"parquet row {i}" for i in range(50)]}), d / "p.parquet")
    with pytest.raises(KdataError) as e:
        open_pool(str(d))
    msg = str(e.value)
    assert "\n" not in msg and str(d / "a.jsonl") in msg and str(d / "p.parquet") in msg
    assert "neither a JSONL text pool nor a Parquet pool" in msg
    # a compressed JSONL file beside Parquet is the same mix
    (d / "a.jsonl").unlink()
    _jsonl(d / "a.jsonl.gz", ["x"], gz=True)
    with pytest.raises(KdataError, match="holds JSONL files .*a.jsonl.gz.* and Parquet files"):
        open_pool(str(d))
    # hidden entries are skipped by both readers' rules here: a hidden Parquet file does not make a mix
    (d / "a.jsonl.gz").unlink()
    _jsonl(d / "a.jsonl", ["only jsonl"])
    (d / "p.parquet").rename(d / ".p.parquet")
    assert _rows(open_pool(str(d))) == ["only jsonl"]


def test_files_that_look_like_data_but_are_not_read_are_refused(tmp_path):
    d = tmp_path / "jdir"
    d.mkdir()
    _jsonl(d / "a.jsonl", ["plain"])
    _jsonl(d / "b.jsonl.gz", ["compressed"], gz=True)
    (d / "c.json").write_text(json.dumps([{"text": "array"}]))
    with pytest.raises(KdataError) as e:
        open_pool(str(d))
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{d / 'b.jsonl.gz'}: a compressed file") and "gunzip" in msg
    (d / "b.jsonl.gz").unlink()
    with pytest.raises(KdataError) as e:
        open_pool(str(d))
    assert str(e.value).startswith(f"{d / 'c.json'}: a .json file") and "rename it to .jsonl" in str(e.value)
    (d / "c.json").unlink()
    _jsonl(d / "sub.ndjson", ["newline-delimited"])  # NDJSON is JSONL: read
    pool = open_pool(str(d))
    assert [u.name for u in pool.units] == ["a.jsonl", "sub.ndjson"]
    assert _rows(pool) == ["plain", "newline-delimited"]
    assert pool.units[1].read().column("sample_id").to_pylist() == ["sub.ndjson:1"]


def test_a_directory_of_compressed_jsonl_only_is_refused_not_unrecognised(tmp_path):
    d = tmp_path / "gz"
    d.mkdir()
    _jsonl(d / "part-0.jsonl.gz", ["x"], gz=True)
    with pytest.raises(KdataError, match=r"part-0.jsonl.gz: a compressed file in the JSONL text pool"):
        open_pool(str(d))


@pytest.mark.parametrize("name,problem", [("pool.jsonl.gz", "a compressed file is not read"),
                                          ("pool.ndjson.bz2", "a compressed file is not read"),
                                          ("pool.json", "a .json file is not read")])
def test_a_single_unread_file_is_one_line(tmp_path, name, problem):
    p = _jsonl(tmp_path / name, ["x"], gz=name.endswith(".gz"))
    with pytest.raises(KdataError) as e:
        open_pool(str(p))
    assert str(e.value).startswith(f"{p}: {problem}") and "\n" not in str(e.value)


def test_a_single_ndjson_file_and_parquet_dirs_with_stray_json_keep_working(tmp_path):
    assert _rows(open_pool(str(_jsonl(tmp_path / "pool.ndjson", ["one", "two"])))) == ["one", "two"]
    d = tmp_path / "pq"
    d.mkdir()
    pq.write_table(pa.table({"text": ["a", "b"]}), d / "part-0.parquet")
    (d / "stats.json").write_text("{}")  # not JSONL: the directory stays a Parquet pool
    pool = open_pool(str(d))
    assert pool.description.startswith("Parquet pool") and pool.units[0].read().num_rows == 2
    # a kdata dataset directory stays a Parquet pool of the shards its manifest lists, whatever lies beside
    (d / "manifest.json").write_text(json.dumps({"files": [{"path": "part-0.parquet"}]}))
    _jsonl(d / "notes.jsonl", ["not a shard"])
    assert [u.name for u in open_pool(str(d)).units] == ["part-0.parquet"]


def test_select_on_a_mixed_directory_is_one_line_exit_2_before_any_model_loads(tmp_path, capsys):
    pytest.importorskip("transformers")
    from kdata.cli import main
    from tests.helpers.text_models import text_assets

    assets = text_assets()
    d = tmp_path / "mdir"
    d.mkdir()
    (d / "a.jsonl").write_text("".join((assets / "pool.jsonl").read_text().splitlines(keepends=True)[:40]))
    pq.write_table(pa.table({"text": [f"parquet row {i}" for i in range(50)]}), d / "p.parquet")
    capsys.readouterr()
    out = tmp_path / "o"
    rc = main(["select", "--pool", str(d), "--teacher", f"hf:{assets / 't'}", "--student", f"hf:{assets / 's'}",
               "--method", "ddk", "--budget", "1.0", "--out", str(out), "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and not out.exists() and err.count("\n") == 0, err
    assert str(d / "a.jsonl") in err and str(d / "p.parquet") in err
