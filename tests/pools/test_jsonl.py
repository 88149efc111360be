"""JSONL text pools (kdata.pools.jsonl): pyarrow's reader where it gives the per-line parser's table."""

from __future__ import annotations

import json

import pytest

from kdata.dataset.schema import READ_ERROR
from kdata.pools.spec import open_pool
from kdata.pools.text import text_problems


def _lines(path, objs, raw=()):
    path.write_bytes(b"\n".join([json.dumps(o).encode() for o in objs] + list(raw)) + b"\n")
    return path


_LINES = [  # (line, the fast reader may take a file made only of such lines)
    (b'{"id": 7, "text": "hello", "label": "pos", "domain": "web"}', True),
    (b'{"id": 8, "text": "caf\\u00e9 \xc3\xa9 \xe2\x9c\x93", "meta": {"x": [1, 2]}, "source": "crawl"}', True),
    (b'  {"text": "no id", "label": null}  ', True),
    (b'{"id": 9, "text": ""}', True),
    (b'{"id": 10, "text": "x", "extra": NaN}\r', True),
    (b'{"sample_id": "s-1", "id": 3, "text": "both ids"}', False),  # beside lines without one: lines decide
    (b'{"sample_id": null, "id": 4, "text": "null sample_id"}', False),
    (b'{"id": "str-id", "text": "string id"}', False),  # mixed with int ids in one file: lines decide
    (b'{"text": 3}', False), (b'{"label": "no text"}', False), (b'{"text": null}', False),
    (b'{"text": "a", "label": 3}', False), (b'{"text": "a", "text": "b"}', False),
    (b'{"text": "a"} {"text": "b"}', False), (b'{not json', False), (b'[1, 2]', False),
    (b'{"text": "\xff\xfe"}', False), (b'{"text": "tab\there"}', False), (b"", False), (b"   ", False),
    (b'{"id": 1.5, "text": "float id"}', False), (b'{"id": true, "text": "bool id"}', False),
    (b'{"text": "ok", "meta": "\xff"}', False), (b'{"text": "lone \\ud800"}', False),
    (b'{"id": "x\\udc00", "text": "surrogate in the id", "label": "l\\ud800"}', False),
]


def test_an_unpaired_surrogate_escape_is_a_quarantine_reason_not_a_crash(tmp_path):
    p = _lines(tmp_path / "s.jsonl", [], raw=[b'{"text": "a\\ud800"}', b'{"id": "x\\udc00", "text": "fine", "label": "l\\ud800"}'])
    t = open_pool(str(p)).units[0].read()
    assert t.column(READ_ERROR).to_pylist()[0] == ("undecodable_text: 'text' holds an unpaired UTF-16 surrogate "
                                                   "escape (line 1)")
    assert t.column("sample_id").to_pylist()[1] == "x\\udc00" and t.column("label").to_pylist()[1] == "l\\ud800"
    assert text_problems(t)[1] is None


@pytest.mark.parametrize("seed", range(60))
def test_fast_jsonl_reader_gives_the_per_line_table_or_steps_aside(tmp_path, seed):
    """pyarrow's JSON reader is used only where it yields exactly the per-line parser's table."""
    import random

    from kdata.pools.jsonl import _read_jsonl_arrow, read_jsonl

    rng = random.Random(seed)
    clean = [line for line, ok in _LINES if ok and b'"id": 8' not in line or seed % 2 and ok]
    pick = rng.sample(clean, k=min(len(clean), rng.randint(1, 4))) * rng.randint(1, 3)
    if seed % 3 == 0:  # some files carry one line only the per-line parser reads right
        pick.insert(rng.randrange(len(pick) + 1), rng.choice([line for line, ok in _LINES if not ok]))
    data = (b"\xef\xbb\xbf" if seed % 5 == 0 else b"") + b"\n".join(pick) + (b"\n" if seed % 4 else b"")
    p = tmp_path / "f.jsonl"
    p.write_bytes(data)
    fast, slow = read_jsonl(p, name="f.jsonl"), read_jsonl(p, name="f.jsonl", fast=False)
    assert fast.equals(slow), (seed, data)
    if seed % 3:  # only lines it can take: it does take them
        assert _read_jsonl_arrow(data.removeprefix(b"\xef\xbb\xbf"), name="f.jsonl", source="f.jsonl") is not None
    every = b"".join(b'{"sample_id": "s-%d", "id": %d, "text": "t"}\n' % (i, i) for i in range(3))
    assert _read_jsonl_arrow(every, name="f", source="f").column("sample_id").to_pylist() == ["s-0", "s-1", "s-2"]


@pytest.mark.parametrize(("raw", "why"), [
    (b'{"id": 0, "body": "hello"}\n{"id": 1, "body": "world"}\n', "first line's keys: id, body"),
    (b'[{"text": "a list, not an object"}]\n"a string"\n', "line 1: a JSON list, not an object"),
    (b'\n"only strings"\n"here"\n', "line 2: a JSON str, not an object"),
    (b'{"text": 3}\n{"text": [1]}\n', "first line's 'text' is a JSON int"),
    (b'{"text": null}\n', "first line's 'text' is null"),
    ('{"text": "utf-16"}\n'.encode("utf-16"), "line 1: not valid UTF-8"),
])
@pytest.mark.parametrize("fast", [True, False])
def test_a_file_without_text_on_any_line_is_one_line_naming_it(tmp_path, raw, why, fast):
    from kdata.core.errors import KdataError
    from kdata.pools.jsonl import read_jsonl

    p = tmp_path / "wrong.jsonl"
    p.write_bytes(raw)
    with pytest.raises(KdataError) as exc:
        read_jsonl(p, name=p.name, fast=fast)
    msg = str(exc.value)
    assert msg.startswith(f"{p}: no line holds a string 'text' field (") and why in msg and "\n" not in msg


def test_a_file_where_only_some_lines_lack_text_keeps_them_as_quarantine_rows(tmp_path):
    p = _lines(tmp_path / "some.jsonl", [{"body": "x"}, {"text": "kept"}, {"text": None}], raw=[b"[1]"])
    t = open_pool(str(p)).units[0].read()
    assert t.column("text").to_pylist() == [None, "kept", None, None]
    why = text_problems(t)
    assert why[0] == "undecodable_text: no 'text' field (line 1)" and why[1] is None
    assert why[2] == "empty_text" and why[3] == "undecodable_text: a JSON list, not an object (line 4)"
    blank = tmp_path / "blank.jsonl"  # nothing but blank lines: an empty unit, not a wrong shape
    blank.write_bytes(b"\n  \n")
    assert open_pool(str(blank)).units[0].read().num_rows == 0
