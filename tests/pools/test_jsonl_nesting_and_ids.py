"""JSONL lines the reader could not use but did not say so: a line nested 100,000 deep crashed
every JSONL reader with RecursionError (exit 1), and an ``id`` that is a list, object, boolean or
empty string became the id ``"[0]"``, ``"True"`` or ``""``. Such a line is now a quarantined row
with its reason under ``<file>:<line>``, the same from pyarrow's reader and the per-line parser,
and the run goes on with the other lines (nothing lost: kept + rejected + quarantined = lines)."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from kdata.cli import main
from kdata.core.errors import KdataError
from kdata.dataset.decisions import quarantine_kind
from kdata.pools.json_depth import MAX_DEPTH, may_nest_deeper, nesting_depth, too_deep
from kdata.pools.jsonl import read_jsonl

DEEP = b'{"id": "deep", "text": "b", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"


def _good(i: int) -> bytes:
    return json.dumps({"id": f"g{i}", "text": f"def f{i}(x): return x * {i}", "tags": ["a", "b"]}).encode()


def _write(path, lines: list[bytes]):
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def test_depth_is_counted_outside_strings_and_by_a_fixed_limit():
    assert nesting_depth(b'{"a": "[[[[{{", "b": [[1], {"c": [2]}]}') == 4
    assert nesting_depth('{"a": "\\"[[[", "b": 1}') == 1  # an escaped quote does not end the string
    assert nesting_depth(DEEP) == 100_001
    assert too_deep(b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1))
    assert not too_deep(b"[" * MAX_DEPTH + b"]" * MAX_DEPTH)
    assert not too_deep('{"text": "' + "[" * 5000 + '"}')  # brackets in a string are text
    many = b"\n".join(_good(i) for i in range(2000))  # thousands of brackets, none deep
    assert not may_nest_deeper(many, objects=2000) and may_nest_deeper(many + b"\n" + DEEP)


@pytest.mark.parametrize("fast", [True, False])
def test_a_line_nested_100000_deep_is_quarantined_with_the_reason(tmp_path, fast):
    p = _write(tmp_path / "pool.jsonl", [_good(0), DEEP, _good(2)])
    t = read_jsonl(p, name="pool.jsonl", fast=fast)
    assert t.column("sample_id").to_pylist() == ["g0", "pool.jsonl:2", "g2"]
    assert t.column("read_error").to_pylist() == [
        None, f"undecodable_text: JSON nested more than {MAX_DEPTH} levels deep (line 2)", None]
    assert t.column("text").to_pylist()[1] is None


def test_a_file_of_only_a_deep_line_is_refused_in_one_line(tmp_path):
    p = _write(tmp_path / "deep.jsonl", [DEEP])
    with pytest.raises(KdataError, match=r"deep\.jsonl: no line holds a string 'text' field \(line 1: JSON nested"):
        read_jsonl(p, name="deep.jsonl")


BAD_IDS = [
    (b'{"id": [0], "text": "x"}', "undecodable_text: 'id' is a JSON list, not a string or number (line 2)"),
    (b'{"id": {"a": 1}, "text": "x"}', "undecodable_text: 'id' is a JSON object, not a string or number (line 2)"),
    (b'{"id": true, "text": "x"}', "undecodable_text: 'id' is a JSON boolean, not a string or number (line 2)"),
    (b'{"id": "", "text": "x"}', "undecodable_text: 'id' is an empty string (line 2)"),
    (b'{"sample_id": "", "id": "fine", "text": "x"}', "undecodable_text: 'sample_id' is an empty string (line 2)"),
    (b'{"sample_id": [1], "text": "x"}',
     "undecodable_text: 'sample_id' is a JSON list, not a string or number (line 2)"),
]


@pytest.mark.parametrize("line, reason", BAD_IDS)
@pytest.mark.parametrize("fast", [True, False])
def test_an_id_that_names_no_sample_quarantines_its_line(tmp_path, line, reason, fast):
    p = _write(tmp_path / "pool.jsonl", [_good(0), line, _good(2)])
    t = read_jsonl(p, name="pool.jsonl", fast=fast)
    assert t.column("sample_id").to_pylist() == ["g0", "pool.jsonl:2", "g2"]
    assert t.column("read_error").to_pylist() == [None, reason, None]


def test_plain_ids_are_read_as_before(tmp_path):
    p = _write(tmp_path / "pool.jsonl", [b'{"id": 7, "text": "a"}', b'{"id": 8, "text": "b"}'])
    for fast in (True, False):
        t = read_jsonl(p, name="pool.jsonl", fast=fast)
        assert t.column("sample_id").to_pylist() == ["7", "8"] and t.column("read_error").null_count == 2


def test_cli_select_quarantines_the_deep_line_and_the_list_id_and_accounts_every_line(tmp_path, capsys):
    lines = [_good(i) for i in range(6)] + [DEEP, b'{"id": [0], "text": "hello world"}']
    p = _write(tmp_path / "pool.jsonl", lines)
    out = tmp_path / "out"
    code = main(["select", "--method", "random", "--teacher", "builtin:text-teacher", "--student",
                 "builtin:text-student", "--pool", str(p), "--budget", "1", "--device", "cpu", "--out", str(out),
                 "--quiet"])
    assert code == 0, capsys.readouterr().err
    dec = pq.read_table(out / "decisions.parquet").to_pylist()
    assert len(dec) == len(lines)
    quarantined = {r["sample_id"]: quarantine_kind(r["error"]) for r in dec if r["decision"] == "quarantined"}
    assert quarantined == {"pool.jsonl:7": f"undecodable_text: JSON nested more than {MAX_DEPTH} levels deep",
                           "pool.jsonl:8": "undecodable_text: 'id' is a JSON list, not a string or number"}


def test_a_prompts_file_nested_too_deep_is_one_line_naming_file_and_line(tmp_path):
    from kdata.pipeline.generate import read_prompts

    p = tmp_path / "prompts.jsonl"
    p.write_text('{"id": "a", "prompt": "x"}\n' + "[" * 100_000 + "\n")
    with pytest.raises(KdataError, match=r"prompts\.jsonl: line 2: JSON nested more than 500 levels deep"):
        read_prompts(str(p))
