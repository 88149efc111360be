"""What the integrity check and the readers of a dataset accept as its files: only files inside it (no
``..``, no absolute path, no symlink out), and one decisions table — the checksummed one is the one read."""

from __future__ import annotations

import json
import os
import shutil

import pyarrow as pa
import pyarrow.parquet as pq

from kdata.cli import main
from kdata.dataset.integrity import decisions_path, inside
from kdata.dataset.writer import verify


def _copy(demo_run, tmp_path, name="ds"):
    dst = tmp_path / name
    shutil.copytree(demo_run, dst)
    return dst


def _edit_manifest(ds, change) -> None:
    path = ds / "manifest.json"
    m = json.loads(path.read_text())
    change(m)
    path.write_text(json.dumps(m))


def test_a_decisions_file_naming_another_table_is_refused_not_rendered(demo_run, tmp_path, capsys):
    other = tmp_path / "other.parquet"
    pq.write_table(pa.table({"sample_id": ["x"], "decision": ["kept"], "reason": [None]}), other)
    ds = _copy(demo_run, tmp_path)
    _edit_manifest(ds, lambda m: m.update(decisions_file=str(other)))
    assert decisions_path(ds, json.loads((ds / "manifest.json").read_text())) is None
    assert main(["inspect", str(ds)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "decisions table it names points outside the dataset" in err, err
    assert main(["card", str(ds)]) == 1  # a failed integrity check, as for any damaged dataset: no card
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not the checksummed decisions table" in err, err
    problems = verify(ds)
    assert any("is not the checksummed decisions table" in p for p in problems), problems


def test_an_older_manifest_naming_a_table_without_decisions_is_one_line(demo_run, tmp_path, capsys):
    ds = _copy(demo_run, tmp_path)
    pq.write_table(pa.table({"a": [1]}), ds / "notes.parquet")
    _edit_manifest(ds, lambda m: (m.pop("decisions"), m.update(decisions_file="notes.parquet")))
    assert main(["inspect", str(ds)]) == 2
    err = capsys.readouterr().err
    assert err == f"kdata: error: {ds / 'notes.parquet'}: not a decisions table (no 'sample_id', 'decision' column)\n"


def test_a_shard_symlinked_to_a_file_elsewhere_is_outside(demo_run, tmp_path):
    ds = _copy(demo_run, tmp_path)
    shard = next((ds / "data").glob("*.parquet"))
    elsewhere = tmp_path / "elsewhere.parquet"
    shutil.move(shard, elsewhere)
    os.symlink(elsewhere, shard)  # the same bytes: only where it lives is wrong
    rel = str(shard.relative_to(ds))
    assert inside(ds, rel) is None and inside(tmp_path, "elsewhere.parquet") is not None
    assert any("points outside the dataset" in p for p in verify(ds))
