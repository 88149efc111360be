"""Files written beside the shards (``excluded.parquet``, ``excluded_synthetic.parquet``, the only record of
what a run rejected) are checksummed in the manifest (``extra_files``: sha256, bytes, rows) and verified
wherever the shards are: ``verify`` / ``kdata inspect``, a rerun's already-complete check, and the commands
that read a dataset (``require_intact``). Datasets written before the record existed still verify.

Real runs only: ``kdata select --hard 1`` on the built-in models and pool, ``kdata generate`` on a tiny
real GPT-2."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from kdata.augment.hard import EXCLUDED_FILE as EXCLUDED_SYNTHETIC
from kdata.cli import main
from kdata.core.atomic import sha256_file
from kdata.core.errors import KdataError
from kdata.dataset.writer import MANIFEST, read_manifest, require_intact, verify
from kdata.models.hf_generate import DecodeConfig
from kdata.pipeline.config import RunOptions, SelectConfig
from kdata.pipeline.generate import GenerateConfig
from kdata.pipeline.generate_output import EXCLUDED_FILE as EXCLUDED
from kdata.pipeline.generate_run import run_generate
from kdata.pipeline.run import run_select
from tests.helpers.damage import garbage_inside, rewrite_parquet
from tests.helpers.text_models import tiny_lm

SELECT = SelectConfig(method="kd3", budget="60", hard=1)  # rejects 5 of its 60 generated rows


@pytest.fixture(scope="module")
def hard_run(tmp_path_factory, builtin_models) -> Path:
    """``kdata select --hard 1``: shards + excluded_synthetic.parquet."""
    out = tmp_path_factory.mktemp("extra") / "hard"
    run_select(SELECT, out=str(out), opts=RunOptions(device="cpu"))
    return out


def _gen_cfg(base: Path) -> GenerateConfig:
    prompts = base / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"q{i}", "prompt": f"prompt number {i}"}) + "\n" for i in range(4)))
    return GenerateConfig(teacher=f"hf:{tiny_lm(base / 'teacher', seed=2)}", prompts=str(prompts), per_prompt=3,
                          shard_size=2, decode=DecodeConfig(max_new_tokens=5, seed=0))


@pytest.fixture(scope="module")
def gen_run(tmp_path_factory) -> tuple[Path, GenerateConfig]:
    """``kdata generate``: shards + excluded.parquet."""
    base = tmp_path_factory.mktemp("extra-gen")
    cfg = _gen_cfg(base)
    run_generate(cfg, out=base / "gen", device="cpu")
    return base / "gen", cfg


def _copy(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / src.name
    shutil.copytree(src, dst)
    return dst


def _inspect_json(out: Path) -> tuple[int, dict]:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["inspect", str(out), "--json"])
    return rc, json.loads(buf.getvalue())


@pytest.mark.parametrize("which", ["hard", "gen"])
def test_manifest_records_each_extra_file(which, hard_run, gen_run):
    out, name = (hard_run, EXCLUDED_SYNTHETIC) if which == "hard" else (gen_run[0], EXCLUDED)
    entries = read_manifest(out)["extra_files"]
    assert [e["path"] for e in entries] == [name]
    path = out / name
    assert entries[0] == {"path": name, "rows": pq.ParquetFile(path).metadata.num_rows,
                          "bytes": path.stat().st_size, "sha256": sha256_file(path)}
    assert verify(out) == []


def test_truncated_excluded_file_fails_verify_inspect_and_the_rerun(hard_run, tmp_path):
    out = _copy(hard_run, tmp_path)
    path = out / EXCLUDED_SYNTHETIC
    n = pq.ParquetFile(path).metadata.num_rows
    assert n >= 2, "the fixture must reject some generated rows"
    rewrite_parquet(path, lambda t: t.slice(0, 1))  # valid Parquet, fewer rows
    problems = verify(out)
    assert len(problems) == 1 and problems[0].startswith(f"{path}: ")
    rc, summary = _inspect_json(out)
    assert rc == 1 and summary["integrity"]["ok"] is False and summary["integrity"]["problems"] == problems
    # a rerun of the same run is not "already complete": it names the damaged file
    with pytest.raises(KdataError, match=f"damaged: {path}: "):
        run_select(SELECT, out=str(out), opts=RunOptions(device="cpu"))
    # the commands that read a dataset refuse it as they refuse a damaged shard
    with pytest.raises(KdataError, match=f"integrity check failed, x: {path}: "):
        require_intact(out, refusal="x")


def test_deleted_and_changed_excluded_file_are_named(gen_run, tmp_path):
    out, cfg = gen_run
    out = _copy(out, tmp_path)
    path = out / EXCLUDED
    garbage_inside(path, n=16)  # same size: only the checksum can tell
    assert verify(out) == [f"{path}: sha256 mismatch (file changed since it was written)"]
    path.unlink()
    assert verify(out) == [f"{path}: missing"]
    with pytest.raises(KdataError, match=f"damaged: {path}: missing"):
        run_generate(cfg, out=out, device="cpu")


def test_a_dataset_written_before_extra_files_were_recorded_still_verifies(hard_run, tmp_path):
    out = _copy(hard_run, tmp_path)
    m = read_manifest(out)
    del m["extra_files"]
    (out / MANIFEST).write_text(json.dumps(m))
    (out / EXCLUDED_SYNTHETIC).unlink()
    assert verify(out) == []
    rc, summary = _inspect_json(out)
    assert rc == 0 and summary["integrity"]["ok"] is True
    assert run_select(SELECT, out=str(out), opts=RunOptions(device="cpu")).status == "already complete"


def test_a_malformed_extra_files_entry_is_one_problem(hard_run, tmp_path):
    out = _copy(hard_run, tmp_path)
    m = read_manifest(out)
    for bad, expect in (("nope", "'extra_files' is not a list"), ([{"path": "../x", "bytes": 1, "sha256": "a"}],
                                                                  "points outside the dataset")):
        (out / MANIFEST).write_text(json.dumps({**m, "extra_files": bad}))
        problems = verify(out)
        assert len(problems) == 1 and expect in problems[0]
