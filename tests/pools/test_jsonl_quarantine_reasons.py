"""A reader's quarantine reason is ``<kind>: <message> (<where>)``: what differs from row to row (a
line number, a byte offset, a length, a tar member's name) sits in the trailing brackets, so equal
problems count as one kind (``quarantine_kind``) while each row's error still says where."""

from __future__ import annotations

import io
import tarfile

import pytest

from kdata.dataset.decisions import quarantine_kind
from kdata.dataset.schema import READ_ERROR
from kdata.pools.jsonl import read_jsonl
from kdata.pools.spec import open_pool
from kdata.pools.text import text_problems

BAD = {  # one bad line, repeated: every copy must be one kind
    "no text": b'{"id_": 1, "content": "x"}',
    "not JSON": b'{"text": ',
    "not an object": b'["a list"]',
    "not a string": b'{"text": 3}',
    "surrogate": b'{"text": "\\ud800 alone"}',
    "not UTF-8": b'{"text": "caf\xe9"}',
}


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("case", list(BAD))
def test_each_jsonl_problem_is_one_kind_with_the_line_in_its_error(tmp_path, case, fast):
    lines = []
    for i in range(10):
        lines += [b'{"text": "fine %d"}' % i, BAD[case] if i % 2 else b'{"text": "also fine"}']
    (tmp_path / "p.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    t = read_jsonl(tmp_path / "p.jsonl", name="p.jsonl", fast=fast)
    errors = [e for e in t.column(READ_ERROR).to_pylist() if e is not None]
    assert len(errors) == 5
    kinds = {quarantine_kind(e) for e in errors}
    assert len(kinds) == 1 and next(iter(kinds)).startswith("undecodable_text: "), kinds
    assert "line" not in next(iter(kinds))
    for n, e in zip((4, 8, 12, 16, 20), errors):  # the line number stays in each row's error
        assert f"(line {n}" in e, e


def test_no_text_field_reads_as_the_review_asked(tmp_path):
    (tmp_path / "p.jsonl").write_bytes(b'{"text": "a"}\n{"content": "b"}\n')
    [_, err] = read_jsonl(tmp_path / "p.jsonl", name="p.jsonl").column(READ_ERROR).to_pylist()
    assert err == "undecodable_text: no 'text' field (line 2)"
    assert quarantine_kind(err) == "undecodable_text: no 'text' field"


def test_too_long_is_one_kind_whatever_the_length(tmp_path):
    import pyarrow as pa

    t = pa.table({"sample_id": ["a", "b"], "text": ["x" * 50, "y" * 70]})
    why = text_problems(t, max_chars=40)
    assert why == ["too_long: over 40 chars (50 chars)", "too_long: over 40 chars (70 chars)"]
    assert {quarantine_kind(w) for w in why} == {"too_long: over 40 chars"}


def test_refused_tar_members_are_one_kind_per_problem(tmp_path):
    path = tmp_path / "shard.tar"
    with tarfile.open(path, "w") as tf:
        for key in ("a001", "b002", "c003"):
            cls = tarfile.TarInfo(f"{key}.cls")
            cls.size = 1
            tf.addfile(cls, io.BytesIO(b"1"))
            link = tarfile.TarInfo(f"{key}.png")
            link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tf.addfile(link)
    rows = {r["sample_id"]: r for r in open_pool(str(path)).units[0].read().to_pylist()}
    assert rows["a001"]["read_error"] == "tar member is a symlink, not a file (a001.png)"
    assert {quarantine_kind(r["read_error"]) for r in rows.values()} == {"tar member is a symlink, not a file"}
