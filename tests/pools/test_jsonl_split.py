"""Large JSONL files as byte-range units (kdata.pools.jsonl_split): the whole file's table, read a range at a time."""

from __future__ import annotations

import hashlib
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import kdata.pools.jsonl_split as split
from kdata.core.errors import KdataError
from kdata.pools.jsonl import JSONL_READER, read_jsonl
from kdata.pools.spec import open_pool

OLD_NS = 1_600_000_000 * 10**9  # an mtime far from "now": the file's index is remembered by its signature


def _mixed_lines() -> list[bytes]:
    """Lines of every kind the whole-file reader treats specially, ~60 bytes each."""
    out = []
    for i in range(60):
        kind = i % 10
        out.append({0: b'{"text": "plain %d"}' % i,
                    1: b'{"text": "crlf %d", "label": "l"}\r' % i,
                    2: b"",
                    3: b'{"id": %d, "text": "caf\xc3\xa9 %d", "domain": "d"}' % (i, i),
                    4: b"{not json %d" % i,
                    5: b'{"text": "bad utf8 \xff %d"}' % i,
                    6: b"   \r",
                    7: b'{"sample_id": "s%d", "text": "own id"}' % i,
                    8: b'{"text": %d}' % i,
                    9: b'{"text": "nothing special %d", "meta": [1, 2]}' % i}[kind])
    return out


def _write(path, lines: list[bytes], *, bom: bool = False, old: bool = True):
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + b"\n".join(lines) + b"\n")
    if old:
        os.utime(path, ns=(OLD_NS, OLD_NS))
    return path


def _units_table(path):
    pool = open_pool(str(path))
    return pool, pa.concat_tables([u.read() for u in pool.units])


@pytest.mark.parametrize("source", ["none", "one part", "escaped key"])
@pytest.mark.parametrize("bom", [False, True])
def test_a_split_file_gives_exactly_the_whole_file_table(tmp_path, monkeypatch, source, bom):
    """Ids from the file's line numbers, blank / bad / CRLF lines, a BOM at the file's start only,
    and the file-wide ``source`` fallback: the ranges together are the whole-file table."""
    lines = _mixed_lines()
    if source != "none":  # one line far from the others' ranges holds a source: every other row is null
        lines[-1] = b'{"text": "src", "source": "crawl"}' if source == "one part" else \
            b'{"text": "src", "\\u0073ource": "crawl"}'
    p = _write(tmp_path / "big.jsonl", lines, bom=bom)
    whole = read_jsonl(p, name="big.jsonl")
    monkeypatch.setattr(split, "SPLIT_BYTES", 400)
    pool, parts = _units_table(p)
    assert len(pool.units) >= 3 and all(u.name.startswith("big.jsonl#bytes=") for u in pool.units)
    assert parts.equals(whole)
    sources = set(whole.column("source").to_pylist())
    assert sources == ({"big.jsonl"} if source == "none" else {None, "crawl"})
    slow = [split.read_jsonl_part(p, name="big.jsonl", parts=split.jsonl_parts(p, split.jsonl_cuts(p)), k=k,
                                  fast=False) for k in range(len(pool.units))]
    assert pa.concat_tables(slow).equals(whole)


def test_a_bad_line_right_at_a_cut_is_the_same_row(tmp_path, monkeypatch):
    good = [b'{"text": "%s"}' % (b"x" * 40) for _ in range(12)]
    p = _write(tmp_path / "cut.jsonl", good)
    size = len(good[0]) + 1
    monkeypatch.setattr(split, "SPLIT_BYTES", 3 * size)  # cuts after lines 3, 6, 9 (1-based)
    cuts = split.jsonl_cuts(p)
    assert [b for _, b in cuts[:-1]] == [3 * size, 6 * size, 9 * size]
    lines = list(good)  # the same lengths: the last line before a cut and the first after one are bad
    lines[2], lines[3], lines[6] = (bad.ljust(len(good[0])) for bad in (b"{broken", b'{"text": 1}', b"\xff\xfe x"))
    p = _write(tmp_path / "cut.jsonl", lines)
    assert split.jsonl_cuts(p) == cuts
    _, parts = _units_table(p)
    whole = read_jsonl(p, name="cut.jsonl")
    assert parts.equals(whole)
    errors = parts.column("read_error").to_pylist()
    assert errors[2].startswith("undecodable_text: not JSON (line 3: ")
    assert "'text' is a JSON int, not a string (line 4)" in errors[3]
    assert errors[6].startswith("undecodable_text: not valid UTF-8 (line 7, byte")


def test_each_range_reads_only_its_own_bytes(tmp_path, monkeypatch):
    """Bytes outside a range are wrecked in place (same size, inode and mtime: the file's signature
    holds); the range's unit still reads its rows, so it read nothing else."""
    lines = [b'{"text": "row %03d"}' % i for i in range(90)]
    p = _write(tmp_path / "r.jsonl", lines)
    monkeypatch.setattr(split, "SPLIT_BYTES", 300)
    pool = open_pool(str(p))
    want = {u.name: u.read().column("text").to_pylist() for u in pool.units}
    assert len(pool.units) >= 3
    monkeypatch.setenv("KDATA_CACHE", str(tmp_path / "fresh-cache"))  # no parsed unit to map: the range is read
    middle = pool.units[1]
    start, stop = (int(x) for x in middle.name.rsplit("=", 1)[1].split("-"))
    with open(p, "r+b") as f:
        f.write(b"\x00" * start)
        f.seek(stop)
        f.write(b"\x00" * (os.path.getsize(p) - stop))
    os.utime(p, ns=(OLD_NS, OLD_NS))
    assert middle.read().column("text").to_pylist() == want[middle.name]
    assert pool.units[0].read().column("text").to_pylist() == [None]  # the wreck is real: one line of zeros
    assert len(want[middle.name]) == 300 // len(lines[0] + b"\n")  # 15 lines: the file is zeros elsewhere


def test_a_file_under_the_size_stays_one_unit_with_todays_name_and_fingerprint(tmp_path, monkeypatch):
    p = _write(tmp_path / "small.jsonl", _mixed_lines())
    monkeypatch.setattr(split, "SPLIT_BYTES", os.path.getsize(p))
    [u] = open_pool(str(p)).units
    assert u.name == "small.jsonl"
    assert u.fingerprint() == f"sha256:{hashlib.sha256(p.read_bytes()).hexdigest()}:{JSONL_READER}"
    assert u.read().equals(read_jsonl(p, name="small.jsonl"))
    one_line = _write(tmp_path / "one.jsonl", [b'{"text": "%s"}' % (b"y" * 5000)])  # no newline to cut at
    monkeypatch.setattr(split, "SPLIT_BYTES", 100)
    assert [u.name for u in open_pool(str(one_line)).units] == ["one.jsonl"]


def test_appending_lines_keeps_the_earlier_ranges_fingerprints(tmp_path, monkeypatch):
    lines = [b'{"text": "row %03d"}' % i for i in range(60)]
    p = _write(tmp_path / "grow.jsonl", lines)
    monkeypatch.setattr(split, "SPLIT_BYTES", 200)
    before = [u.fingerprint() for u in open_pool(str(p)).units]
    p = _write(tmp_path / "grow.jsonl", lines + [b'{"text": "new %03d"}' % i for i in range(30)])
    os.utime(p, ns=(OLD_NS + 10**9, OLD_NS + 10**9))
    after = [u.fingerprint() for u in open_pool(str(p)).units]
    assert len(after) > len(before) and after[:len(before) - 1] == before[:-1]  # the last one may have grown
    assert all(f.startswith("sha256:") and '"grow.jsonl"' in f for f in after)


@pytest.mark.parametrize("fast", [True, False])
def test_a_split_file_without_text_is_refused_by_any_range_and_a_late_text_is_enough(tmp_path, monkeypatch, fast):
    monkeypatch.setattr(split, "SPLIT_BYTES", 100)
    p = _write(tmp_path / "wrong.jsonl", [b""] + [b'{"id": %d, "body": "no text here"}' % i for i in range(20)])
    with pytest.raises(KdataError) as whole:
        read_jsonl(p, name=p.name, fast=fast)
    cuts = split.jsonl_cuts(p)
    assert len(cuts) >= 3
    for k in (0, len(cuts) - 1):
        with pytest.raises(KdataError) as part:
            split.read_jsonl_part(p, name=p.name, parts=split.jsonl_parts(p, cuts), k=k, fast=fast)
        assert str(part.value) == str(whole.value)
        assert "line 2" not in str(part.value) and "first line's keys: id, body" in str(part.value)
    late = _write(tmp_path / "late.jsonl", [b'{"body": "x"}'] * 20 + [b'{"text": "finally"}'])
    _, parts = _units_table(late)
    assert parts.equals(read_jsonl(late, name="late.jsonl"))


def test_a_select_run_over_a_split_file_keeps_what_one_unit_keeps(tmp_path, monkeypatch):
    """Default ids ``<file>:<line>`` tie the scores to lines: the kept set and rows are the same."""
    from kdata.cli import main

    lines = [(b'{"text": "doc %d %s"}' % (i, b"w" * (i % 7))) if i % 11 else b"" for i in range(1, 121)]
    lines[40] = b"{not json"
    p = _write(tmp_path / "pool.jsonl", lines)
    ids = [f"pool.jsonl:{i + 1}" for i, line in enumerate(lines) if line.strip()]
    scores = tmp_path / "scores.parquet"
    pq.write_table(pa.table({"sample_id": ids,
                             "teacher_logprob": [-1.0 - (7 * i % 13) / 10 for i in range(len(ids))],
                             "reference_logprob": [-2.0 + (5 * i % 11) / 10 for i in range(len(ids))]}), scores)

    def kept(out, size):
        monkeypatch.setattr(split, "SPLIT_BYTES", size)
        assert main(["select", "--scores", str(scores), "--pool", str(p), "--method", "miniplm", "--budget", "30",
                     "--out", str(out), "--quiet"]) == 0
        t = pa.concat_tables([pq.read_table(f) for f in sorted((out / "data").glob("*.parquet"))])
        d = pq.read_table(out / "decisions.parquet").sort_by("sample_id")
        return t.sort_by("sample_id").select(["sample_id", "text", "score_miniplm"]), d.select(
            ["sample_id", "decision", "reason"])

    one, parts = kept(tmp_path / "one", 1 << 30), kept(tmp_path / "parts", 500)
    monkeypatch.setattr(split, "SPLIT_BYTES", 500)
    assert len(open_pool(str(p)).units) >= 3
    assert one[0].num_rows == 30 and one[0].equals(parts[0]) and one[1].equals(parts[1])
