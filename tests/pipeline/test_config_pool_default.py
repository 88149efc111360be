"""``SelectConfig`` from Python means what the same options mean on the command line: ``scores`` with the
pool left out is a run without a pool (``kdata select --scores F`` without ``--pool``), and ``help()``
lists every field with its help."""

from __future__ import annotations

import pydoc

import numpy as np
import pyarrow.parquet as pq
import pytest

from kdata.cli import build_parser
from kdata.core.jsonable import config_hash
from kdata.pipeline.arguments import config_from_args
from kdata.pipeline.config import RunOptions, SelectConfig, cli_fields, flag_of
from kdata.pipeline.run import run_select
from tests.helpers.methods import write_predictions

# hashes of runs made before the change (recorded with the previous SelectConfig): a finished output
# must still be found "already complete"
BEFORE = {"default": "51de3a610fb0c602feff79cde29cfd9b89aab343d6bd20c21df32fc928e7a727",
          "rad": "c71fea4420a077ec6b68d96876ab490b2fa69680eb1342d70971cfb58c5673fc",
          "kd3": "4c73956611f4093fb6508ee70c4e153b1a2dc685fcd35cbad8cd4b988c532466"}


@pytest.fixture()
def preds(tmp_path):
    rng = np.random.default_rng(0)
    t = rng.normal(size=(60, 4)) * 3
    return write_predictions(tmp_path / "byo.parquet", t, t + rng.normal(size=(60, 4)))


def cli_config(*argv):
    return config_from_args(build_parser().parse_args(["select", *argv, "--out", "unused"]))


def test_scores_without_a_pool_is_a_run_without_a_pool_as_on_the_command_line(preds, tmp_path, monkeypatch):
    """SelectConfig(scores=F) kept the default pool and failed: "builtin:digits-web: holds none of the sample ids"."""
    monkeypatch.setenv("KDATA_CACHE", str(tmp_path / "cache"))
    cfg = SelectConfig(scores=preds, method="kd3", budget="30")
    assert cfg.pool is None
    assert cfg == cli_config("--scores", preds, "--method", "kd3", "--budget", "30")
    assert cfg.hash() == cli_config("--scores", preds, "--method", "kd3", "--budget", "30").hash()
    assert cfg.hash() == config_hash({**cfg.to_dict(), "pool": None})  # what the CLI hashed before
    report = run_select(cfg, out=str(tmp_path / "out"), opts=RunOptions(device="cpu"))
    assert report.counts["kept"] == 30 and report.counts["n_in"] == 60


def test_a_pool_given_explicitly_is_kept_and_hashes_are_unchanged(preds):
    explicit = SelectConfig(scores=preds, pool="builtin:digits-web", method="kd3")
    assert explicit.pool == "builtin:digits-web" and type(explicit.pool) is str
    assert cli_config("--scores", preds, "--pool", "builtin:digits-web", "--method", "kd3").pool == "builtin:digits-web"
    for method, digest in BEFORE.items():
        assert SelectConfig(method=method, budget="0.3").hash() == digest
        assert SelectConfig(pool="builtin:digits-web", method=method, budget="0.3").hash() == digest
        assert cli_config("--method", method, "--budget", "0.3").hash() == digest
    default = SelectConfig()
    assert default.pool == "builtin:digits-web" and type(default.pool) is str  # no sentinel leaks out


@pytest.mark.parametrize("cls", [SelectConfig, RunOptions])
def test_help_lists_every_field_with_its_help_and_flag(cls):
    """help(SelectConfig) showed no field help: it lived only in the fields' metadata."""
    text = pydoc.render_doc(cls, renderer=pydoc.plaintext)
    for f in cls.__dataclass_fields__.values():
        assert f"{f.name} = " in text
        words = f.metadata["help"].replace("%%", "%").split()
        assert " ".join(words[:4]) in " ".join(text.split())
    for f in cli_fields(cls):
        assert f"[{flag_of(f)}]" in text
    assert "budget = '0.3'  [--budget]" in text if cls is SelectConfig else "num_workers = 'auto'  [--workers]" in text
