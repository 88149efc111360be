"""``kdata select`` writes its kept rows a shard at a time (``kdata.pipeline.curated_rows``): the same
shard files, byte for byte, as the one-table path (``curated_table``) on every kind of pool, and a
run never holds every kept payload at once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kdata.cli import main
from kdata.core.errors import KdataError
from kdata.dataset.writer import SCRATCH_DIR, staging_dirs
from kdata.pipeline import curate
from kdata.pipeline.curated_rows import CuratedRows
from kdata.pools.spec import open_pool
from tests.helpers.methods import write_predictions
from tests.helpers.real_inputs import digits, make_image_folder, make_tar, png_bytes

SHARDS = ["--rows-per-shard", "7", "--row-group-rows", "3"]  # several shards (binned on disk), several row groups


def _preds(path: Path, ids: list[str], *, seed: int = 0, label=None) -> str:
    rng = np.random.default_rng(seed)
    t = rng.normal(size=(len(ids), 10)) * 3
    return write_predictions(path, t, t + rng.normal(size=t.shape) * 2, ids=ids,
                             label=rng.integers(0, 10, len(ids)) if label is None else label)


def _select(out: Path, args: list[str]) -> None:
    assert main(["select", *args, "--out", str(out), "--quiet"]) == 0
    assert not list(out.rglob(f"{SCRATCH_DIR}*")) and not staging_dirs(out)


def _assert_same_as_table_path(tmp_path: Path, monkeypatch, args: list[str]) -> dict:
    """Run ``select args`` as shipped and through ``curated_table``; the outputs must be the same files."""
    got, want = tmp_path / "streamed", tmp_path / "table"
    _select(got, args)
    with monkeypatch.context() as m:
        m.setattr(curate, "curated_rows", lambda pool, scores, sel: curate.curated_table(pool, scores, sel))
        _select(want, args)
    mg, mw = (json.loads((d / "manifest.json").read_text()) for d in (got, want))
    assert mg["files"] == mw["files"] and mg["decisions"] == mw["decisions"] and mg["counts"] == mw["counts"]
    for f in mg["files"]:
        assert (got / f["path"]).read_bytes() == (want / f["path"]).read_bytes(), f["path"]
    assert (got / "decisions.parquet").read_bytes() == (want / "decisions.parquet").read_bytes()
    return mg


def _image_table(n: int, *, offset: int = 0) -> pa.Table:
    x, y = digits(n, offset=offset)
    return pa.table({"sample_id": [f"s{offset + i:03d}" for i in range(n)],
                     "image": [png_bytes(a) for a in x], "label": [str(v) for v in y]})


@pytest.mark.parametrize("shards", [SHARDS, []], ids=["several-shards", "one-shard"])
@pytest.mark.parametrize("row_group", [9, 1_000_000], ids=["row-groups", "one-row-group"])
def test_parquet_pool_gives_the_table_paths_bytes(tmp_path, monkeypatch, shards, row_group):
    table = _image_table(60)
    pq.write_table(table, tmp_path / "pool.parquet", row_group_size=row_group)
    preds = _preds(tmp_path / "p.parquet", table.column("sample_id").to_pylist())
    m = _assert_same_as_table_path(tmp_path, monkeypatch, ["--scores", preds, "--pool", str(tmp_path / "pool.parquet"),
                                                           "--method", "rad", "--budget", "0.5", *shards])
    assert m["counts"]["kept"] == 30 and len(m["files"]) == (5 if shards else 1)


def test_several_parquet_units_and_balance(tmp_path, monkeypatch):
    root = tmp_path / "pool"
    root.mkdir()
    for i in range(3):  # ids interleaved across the files: each shard draws from every unit
        pq.write_table(_image_table(20, offset=20 * i), root / f"part-{i}.parquet", row_group_size=6)
    ids = [f"s{i:03d}" for i in range(60)]
    preds = _preds(tmp_path / "p.parquet", ids, seed=3)
    m = _assert_same_as_table_path(tmp_path, monkeypatch, ["--scores", preds, "--pool", str(root), "--method", "rad",
                                                           "--budget", "25", "--balance", "class", *SHARDS])
    assert m["counts"]["kept"] == 25


def test_image_folder_and_tar_pools_give_the_table_paths_bytes(tmp_path, monkeypatch):
    folder = make_image_folder(tmp_path / "folder", 30)
    ids = open_pool(str(folder)).units[0].sample_ids().to_pylist()
    _assert_same_as_table_path(tmp_path / "f", monkeypatch,
                               ["--scores", _preds(tmp_path / "pf.parquet", ids,  # labels agree with the folders
                                                   label=np.array([int(i.split("/")[0]) for i in ids])),
                                "--pool", str(folder),
                                "--method", "rad", "--budget", "0.6", *SHARDS])
    x, y = digits(30)
    tar = make_tar(tmp_path / "pool.tar", [(f"k{i:02d}", str(y[i]), png_bytes(x[i])) for i in range(30)])
    _assert_same_as_table_path(tmp_path / "t", monkeypatch,
                               ["--scores", _preds(tmp_path / "pt.parquet", [f"k{i:02d}" for i in range(30)]),
                                "--pool", str(tar), "--method", "rad", "--budget", "0.4", *SHARDS])


def test_jsonl_text_pool_gives_the_table_paths_bytes(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    n = 50
    with open(tmp_path / "pool.jsonl", "w") as f:
        for i in range(n):
            f.write(json.dumps({"sample_id": f"t{i:03d}", "text": f"{i} " + "word " * int(rng.integers(1, 30)),
                                "domain": f"d{i % 4}"}) + "\n")
    pq.write_table(pa.table({"sample_id": [f"t{i:03d}" for i in range(n)],
                             "teacher_logprob": rng.normal(-2, 0.5, n).astype(np.float32),
                             "reference_logprob": rng.normal(-2.5, 0.5, n).astype(np.float32)}), tmp_path / "p.parquet")
    for balance in ("none", "domain"):
        m = _assert_same_as_table_path(tmp_path / balance, monkeypatch,
                                       ["--scores", str(tmp_path / "p.parquet"), "--pool", str(tmp_path / "pool.jsonl"),
                                        "--method", "miniplm", "--budget", "0.4", "--balance", balance, *SHARDS])
        assert m["counts"]["kept"] == 20


def test_builtin_pool_with_dedup_gives_the_table_paths_bytes(tmp_path, monkeypatch, builtin_models):
    _assert_same_as_table_path(tmp_path, monkeypatch,
                               ["--pool", "builtin:digits-web", "--teacher", "builtin:digits-teacher",
                                "--student", "builtin:digits-student", "--method", "kd3", "--budget", "150",
                                "--dedup", "exact", "--device", "cpu", "--rows-per-shard", "64"])


def test_a_kept_id_the_pool_lacks_is_one_line_naming_it(tmp_path):
    """(``kdata select`` quarantines such rows first; a library caller handing other scores gets this.)"""
    pq.write_table(_image_table(20), tmp_path / "pool.parquet", row_group_size=6)
    kept = pa.table({"sample_id": ["s003", "s404", "s011"], "rank": pa.array([0, 1, 2], pa.int32())})
    rows = CuratedRows(open_pool(str(tmp_path / "pool.parquet")), kept)
    with pytest.raises(KdataError, match=r"pool.parquet: 1 kept sample ids are missing from the pool \(e.g. 's404'\)"):
        with rows.staged(tmp_path / "scratch", rows_per_shard=2):
            pass


PEAK = ("import sys, pyarrow as pa\nfrom kdata.cli import main\nrc = main(sys.argv[1:])\n"
        "print('PEAK', rc, pa.default_memory_pool().max_memory())")


def test_select_never_holds_every_kept_payload(tmp_path):
    """Keep all of an 80 MB pool (20 Parquet files) in shards of 40 rows: Arrow's peak allocation stays
    under half the kept payload bytes (the one-table path holds them at least twice: the rows read,
    then reordered)."""
    n, size, files = 1600, 50_000, 20
    rng = np.random.default_rng(0)
    ids = [f"s{i:05d}" for i in range(n)]
    (tmp_path / "pool").mkdir()
    per = n // files
    for f in range(files):  # files smaller than the Parquet reader's batch: its own memory stays small
        pq.write_table(pa.table({"sample_id": ids[f * per:(f + 1) * per],
                                 "image": pa.array([rng.bytes(size) for _ in range(per)], pa.binary()),
                                 "label": [str(i % 10) for i in range(per)]}),
                       tmp_path / "pool" / f"part-{f:02d}.parquet", compression="NONE")
    preds = _preds(tmp_path / "p.parquet", ids)
    args = ["select", "--scores", preds, "--pool", str(tmp_path / "pool"), "--method", "random",
            "--budget", "1.0", "--rows-per-shard", "40", "--row-group-rows", "20", "--out", str(tmp_path / "out")]
    env = {**os.environ, "KDATA_CACHE": str(tmp_path / "cache")}
    p = subprocess.run([sys.executable, "-c", PEAK, *args], capture_output=True, text=True, env=env, timeout=300)
    line = next(x for x in p.stdout.splitlines() if x.startswith("PEAK"))
    _, rc, peak = line.split()
    assert rc == "0", p.stderr
    assert sum(f["rows"] for f in json.loads((tmp_path / "out" / "manifest.json").read_text())["files"]) == n
    assert int(peak) < n * size / 2, f"Arrow peak {int(peak) / 1e6:.0f} MB for {n * size / 1e6:.0f} MB of kept payload"
