"""The ``curate`` flow's rerun into a finished OUT goes through the same check as ``kdata select``
(``kdata.pipeline.run.check_same_weights``): a pool directory that gained a file since is refused in one
line, never reported "already complete" with the old dataset (tests/pipeline/test_rerun_changed_inputs.py)."""

from __future__ import annotations

import importlib
import json

import pytest

pytest.importorskip("transformers")
pytest.importorskip("prefect")

from tests.helpers.text_models import text_assets  # noqa: E402


@pytest.fixture(scope="module")
def prefect_server():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield


def _lines(prefix: str, n: int) -> str:
    return "".join(json.dumps({"sample_id": f"{prefix}{i}", "text": f"{prefix} text number {i}"}) + "\n"
                   for i in range(n))


def test_curate_flow_refuses_a_pool_that_grew_since(prefect_server, tmp_path, capsys):
    curate = importlib.import_module("kdata.flows.curate")
    d, pool, out = text_assets(), tmp_path / "pool", tmp_path / "flow"
    pool.mkdir()
    (pool / "a.jsonl").write_text(_lines("a", 12))
    (pool / "b.jsonl").write_text(_lines("b", 8))
    args = ["--pool", str(pool), "--teacher", f"hf:{d / 't'}", "--student", f"hf:{d / 's'}", "--method", "random",
            "--budget", "0.5", "--out", str(out), "--device", "cpu", "--json"]
    assert curate.main(args) == 0
    capsys.readouterr()
    assert curate.main(args) == 0 and "already complete" in capsys.readouterr().out
    (pool / "c.jsonl").write_text(_lines("c", 5))
    assert curate.main(args) == 2
    err = capsys.readouterr().err
    assert f"{out}: --out holds this run, made from pool {pool} as it was then; since then c.jsonl added;" in err
