"""Parsed text units cached as Arrow files and memory-mapped (kdata.pools.unit_cache)."""

from __future__ import annotations

import json

import pytest

from kdata.pools.spec import open_pool


def _lines(path, objs):
    path.write_bytes(b"".join(json.dumps(o).encode() + b"\n" for o in objs))
    return path


def test_a_text_unit_is_parsed_once_per_content_and_memory_mapped_after(tmp_path, monkeypatch):
    """Reads after the first come from an Arrow file in the cache (no JSON parsed, no copy kept per
    unit); a changed file is parsed again; a torn entry is replaced; a read-only cache still reads."""
    import os

    import kdata.pools.text as text_mod

    monkeypatch.setenv("KDATA_CACHE", str(tmp_path / "cache"))
    p = _lines(tmp_path / "a.jsonl", [{"id": i, "text": f"row {i}"} for i in range(5)])
    parses = []
    real = text_mod.read_jsonl
    monkeypatch.setattr(text_mod, "read_jsonl", lambda *a, **k: parses.append(1) or real(*a, **k))
    unit = open_pool(str(p)).units[0]
    first, second = unit.read(), unit.read()
    assert first.equals(second) and len(parses) == 1
    entries = list((tmp_path / "cache" / "text-units").glob("*.arrow"))
    assert len(entries) == 1
    assert open_pool(str(p)).units[0].read().equals(first) and len(parses) == 1  # a rerun: no parse either
    _lines(p, [{"id": i, "text": f"new {i}"} for i in range(3)])  # new content: new entry
    os.utime(p, ns=(1, 1))  # a different stat signature even on a coarse clock
    changed = open_pool(str(p)).units[0].read()
    assert changed.column("text").to_pylist() == ["new 0", "new 1", "new 2"] and len(parses) == 2
    for e in (tmp_path / "cache" / "text-units").glob("*.arrow"):  # replaced, as kdata itself writes entries:
        torn = e.with_suffix(".torn")                                  # tables mapped from it stay valid
        torn.write_bytes(b"torn")
        os.replace(torn, e)
    assert open_pool(str(p)).units[0].read().equals(changed) and len(parses) == 3
    blocked = tmp_path / "not-a-dir"  # a cache that cannot be created (a file in the way; root ignores modes)
    blocked.write_text("")
    monkeypatch.setenv("KDATA_CACHE", str(blocked))
    q = _lines(tmp_path / "b.jsonl", [{"text": "only"}])
    assert open_pool(str(q)).units[0].read().column("text").to_pylist() == ["only"] and len(parses) == 4


@pytest.mark.skipif(not __import__("os").path.isdir("/proc/self/fd"), reason="counts open descriptors in /proc")
def test_mapped_units_hold_no_file_descriptor(tmp_path, monkeypatch):
    """A pool of many files whose unit tables are all alive at once must not run out of descriptors."""
    import os

    monkeypatch.setenv("KDATA_CACHE", str(tmp_path / "cache"))
    (tmp_path / "p").mkdir()
    for i in range(60):
        _lines(tmp_path / "p" / f"{i:03d}.jsonl", [{"text": f"row {i}"}])
    pool = open_pool(str(tmp_path / "p"))
    [u.read() for u in pool.units]  # parse and write every entry
    before = len(os.listdir("/proc/self/fd"))
    tables = [u.read() for u in pool.units]  # every one memory-mapped, all alive
    assert len(os.listdir("/proc/self/fd")) < before + 10
    assert [t.column("text")[0].as_py() for t in tables[:2]] == ["row 0", "row 1"]
