"""kdata.core.cache_admin and ``kdata cache``: sizes per section, pruning by last use and by size,
never an entry in use or just used; a pruned cache is made again by the next run, identically."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from kdata.core.cache_admin import MIN_IDLE_S, entries, parse_age, parse_size, prune, usage
from kdata.core.errors import KdataError
from tests.helpers.cli import kdata

DAY = 86400.0


def _entry(root, section, key, *, age_s, names=(".parquet", ".quarantine.json"), size=1000):
    files = []
    for suffix in names:
        p = root / section / f"{key}{suffix}"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x" * size)
        t = time.time() - age_s
        os.utime(p, (t, t))
        files.append(p)
    return files


def test_prune_by_age_removes_only_derived_entries_unused_that_long(tmp_path):
    old = _entry(tmp_path, "scores", "a", age_s=3 * DAY)
    hours = _entry(tmp_path, "scores", "b", age_s=2 * 3600)
    feats = _entry(tmp_path, "dedup-features", "d", age_s=5 * DAY, names=(".parquet", ".json"))
    units = _entry(tmp_path, "text-units", "u", age_s=5 * DAY, names=(".arrow",))
    model = _entry(tmp_path, "models", "m", age_s=30 * DAY, names=(".safetensors",))
    pool = tmp_path / "pools" / "digits-web-v1"
    pool.mkdir(parents=True)
    (pool / "part-00000.parquet").write_bytes(b"p" * 10)
    assert {s: u["entries"] for s, u in usage(tmp_path).items() if u["entries"]} == \
        {"scores": 2, "dedup-features": 1, "text-units": 1, "models": 1, "pools": 1}
    r = prune(tmp_path, older_than_s=DAY)
    assert r["removed"] == 3 and r["removed_bytes"] == 5000 and r["by_section"]["scores"] == 1
    assert not any(p.exists() for p in old + feats + units)
    assert all(p.exists() for p in hours + model) and pool.is_dir()
    assert r["left_bytes"] == 3010


def test_prune_to_a_size_goes_least_recently_used_first_and_never_takes_a_recent_entry(tmp_path):
    ages = {"e1": 10 * DAY, "e2": 5 * DAY, "e3": 2 * DAY, "e4": 60.0}
    for key, age in ages.items():
        _entry(tmp_path, "scores", key, age_s=age)
    dry = prune(tmp_path, max_bytes=4500, dry_run=True)
    assert dry["removed"] == 2 and dry["dry_run"] and len(entries(tmp_path, "scores")) == 4
    r = prune(tmp_path, max_bytes=4500)
    assert {e.key for e in entries(tmp_path, "scores")} == {"e3", "e4"} and not r["over_max_size"]
    r = prune(tmp_path, max_bytes=0)  # e4 was used a minute ago: kept, and said so
    assert {e.key for e in entries(tmp_path, "scores")} == {"e4"}
    assert r["over_max_size"] and r["skipped_recent"] == 1 and MIN_IDLE_S >= 3600


def test_an_entry_locked_by_a_running_process_is_skipped(tmp_path):
    _entry(tmp_path, "scores", "busy", age_s=3 * DAY)
    code = ("import sys, time\nfrom kdata.core.lock import acquire\n"
            f"lock = acquire({str(tmp_path / 'scores' / 'busy.parquet')!r})\nprint('held', flush=True)\n"
            "time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        r = prune(tmp_path, older_than_s=DAY)
        assert r["removed"] == 0 and r["skipped_in_use"] == 1
        assert (tmp_path / "scores" / "busy.parquet").exists()
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
    assert prune(tmp_path, older_than_s=DAY)["removed"] == 1
    assert not any((tmp_path / "scores").iterdir())  # data, marker and the dead holder's lock file


@pytest.mark.parametrize(("text", "value"), [("500M", 500 << 20), ("1.5g", int(1.5 * (1 << 30))), ("2GiB", 2 << 30),
                                             ("123B", 123), ("5k", 5 << 10)])
def test_sizes_parse(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize(("text", "value"), [("30d", 30 * DAY), ("12h", 12 * 3600.0), ("90m", 5400.0), ("7", 7 * DAY)])
def test_ages_parse(text, value):
    assert parse_age(text) == value


def test_a_size_without_its_unit_is_refused():
    """``--older-than 30`` is 30 days, so ``--max-size 20`` must not quietly mean 20 bytes."""
    with pytest.raises(KdataError, match="'20': give a size with its unit"):
        parse_size("20")


@pytest.mark.parametrize("bad", ["", "-1G", "12Q", "nan", "inf"])
def test_bad_sizes_and_ages_are_one_line(bad):
    with pytest.raises(KdataError, match="give a size"):
        parse_size(bad)
    with pytest.raises(KdataError, match="give an age"):
        parse_age(bad)


def _kdata(*args, cache):
    return kdata(*args, env={"KDATA_CACHE": str(cache)})


def _age_all(root, section, days):
    t = time.time() - days * DAY
    for p in (root / section).iterdir():
        os.utime(p, (t, t))


def test_cli_a_hit_keeps_entries_alive_and_a_pruned_cache_is_made_again_identically(tmp_path, builtin_models):
    cache = tmp_path / "cache"
    args = ["select", "--pool", "builtin:digits-web", "--budget", "0.3", "--quiet", "--device", "cpu"]
    assert _kdata(*args, "--out", str(tmp_path / "a"), cache=cache)[0] == 0
    rc, out, _ = _kdata("cache", "--json", cache=cache)
    info = json.loads(out)
    assert rc == 0 and info["sections"]["scores"]["entries"] == 4 and info["sections"]["dedup-features"]["entries"] == 4
    _age_all(cache, "scores", 3)
    assert _kdata(*args, "--out", str(tmp_path / "b"), cache=cache)[0] == 0  # every unit a hit: touched
    rc, out, _ = _kdata("cache", "prune", "--older-than", "1d", "--json", cache=cache)
    assert rc == 0 and json.loads(out)["by_section"]["scores"] == 0
    rc, out, _ = _kdata("cache", "--json", "prune", "--older-than", "1d", "--dry-run", cache=cache)  # either place
    assert rc == 0 and json.loads(out)["dry_run"] is True
    _age_all(cache, "scores", 3)
    _age_all(cache, "dedup-features", 3)
    rc, out, _ = _kdata("cache", "prune", "--older-than", "2d", cache=cache)
    assert rc == 0 and "removed 8 entries" in out and "4 scores" in out and "4 dedup-features" in out
    assert _kdata(*args, "--out", str(tmp_path / "c"), cache=cache)[0] == 0
    for name in ("decisions.parquet", "manifest.json"):
        a, c = (tmp_path / "a" / name).read_bytes(), (tmp_path / "c" / name).read_bytes()
        assert a == c or name == "manifest.json"
    a, c = (json.loads((tmp_path / d / "manifest.json").read_text()) for d in "ac")
    assert a["files"] == c["files"] and a["counts"] == c["counts"]
    rc, _, err = _kdata("cache", "prune", cache=cache)
    assert rc == 2 and err.strip() == "kdata: error: kdata cache prune: give --older-than, --max-size or both"
