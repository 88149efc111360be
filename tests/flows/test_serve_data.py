"""``kdata serve``: a ``distill.data`` that names no dataset now must name what the curate flow writes
(a mistyped one used to pass the checks and fail at the first scheduled distill run)."""

from __future__ import annotations

import importlib

import pytest
import yaml

from kdata.core.errors import KdataError
from kdata.flows.config import written_into


@pytest.mark.parametrize("out, data, named", [
    ("runs/curated-{version}", "runs/curated-*", True),
    ("runs/curated-{version}", "runs/curated-{version}", True),
    ("runs/curated-{version}", "./runs/../runs/curated-2*", True),
    ("runs/curated", "runs/curated", True),
    ("runs/curated-{version}", "runs/curatd-*", False),
    ("runs/curated-{version}", "runs/curated", False),
])
def test_written_into_matches_the_curate_out_pattern(out, data, named):
    assert written_into(out, data) is named


def _config(tmp_path, data: str):
    cfg = {"select": {"pool": "builtin:digits-web", "method": "random", "budget": "0.3"}, "run": {"device": "cpu"},
           "curate": {"name": "chk", "out": str(tmp_path / "runs" / "curated-{version}"), "cron": "0 3 * * *"},
           "distill": {"name": "chk", "data": data, "epochs": 1, "cron": "0 5 * * *"}}
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path, cfg


def test_serve_refuses_a_distill_data_that_names_nothing_curate_writes(tmp_path):
    serve = importlib.import_module("kdata.flows.serve")
    path, cfg = _config(tmp_path, str(tmp_path / "runs" / "curatd-*"))
    with pytest.raises(KdataError) as err:
        serve.check_inputs(path, cfg)
    assert str(err.value).startswith(f"{path}: distill: data {tmp_path}/runs/curatd-*: holds no curated dataset")
    assert "curated-{version}, which it does not name" in str(err.value)
    path, cfg = _config(tmp_path, str(tmp_path / "runs" / "curated-*"))
    serve.check_inputs(path, cfg)  # what curate will write: checked at run time
    assert not (tmp_path / "runs").exists()
