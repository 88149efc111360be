"""The documented flow commands chain as written: curate into ``runs/``, then distill the newest
version, with the student saved beside it; the defaults do not lower the built-in student's
accuracy and a worse student is reported as such; bad input is one line before any flow run."""

from __future__ import annotations

import importlib
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kdata.core.errors import KdataError
from kdata.dataset.writer import read_manifest, verify
from tests.flows.server import artifacts, subproc_env

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "flows.md"


def bash_block(page: Path, *, after: str = "") -> list[list[str]]:
    """The command lines (argv) of the first ```bash block after the heading ``after``."""
    text = page.read_text()
    text = text[text.index(after):]
    start = text.index("```bash\n") + len("```bash\n")
    block = text[start:text.index("```", start)]
    return [argv for line in block.splitlines() if (argv := shlex.split(line, comments=True))]


def distill_artifact(*, flow_run_id=None) -> str:
    """The newest ``distill-summary`` Markdown artifact (of one flow run, when given)."""
    found = artifacts(flow_run_id=flow_run_id, key="distill-summary", limit=1)
    assert found, "the distill flow stored no summary artifact"
    return found[0]["data"]


@pytest.fixture(scope="module")
def chained(prefect_api, builtin_models, tmp_path_factory) -> dict:
    """docs/flows.md's "Run once" commands, run as written in an empty directory holding only a copy
    of flows/config.yaml (each script's ``main``, in this process, against the test server)."""
    work = tmp_path_factory.mktemp("chain")
    (work / "flows").mkdir()
    shutil.copy(ROOT / "flows" / "config.yaml", work / "flows" / "config.yaml")
    cwd = Path.cwd()
    os.chdir(work)
    try:
        for argv in bash_block(DOC, after="## Run once"):
            assert argv[0] == "python" and argv[1].startswith("flows/"), argv
            module = importlib.import_module(f"kdata.flows.{Path(argv[1]).stem}")
            assert module.main(argv[2:]) == 0, argv
        summary = distill_artifact()
    finally:
        os.chdir(cwd)
    return {"work": work, "runs": work / "runs", "summary": summary}


def test_flows_readme_shows_the_commands_the_docs_show():
    assert bash_block(ROOT / "flows" / "README.md") == bash_block(DOC, after="## Run once")


def test_documented_commands_chain_and_write_only_under_runs(chained):
    runs = chained["runs"]
    assert sorted(p.name for p in chained["work"].iterdir()) == ["flows", "runs"]
    datasets = sorted(p for p in runs.iterdir() if (p / "manifest.json").is_file())
    versions = [p for p in datasets if p.name != "curated-v1"]
    assert [p.name for p in datasets if p.name == "curated-v1"] == ["curated-v1"]
    assert len(versions) == 1 and versions[0].name.startswith("curated-2")  # {version}: a UTC timestamp
    # distill trained on the newest complete version and saved the student beside it
    students = sorted(p.name for p in runs.iterdir() if p.name.endswith("-student"))
    assert students == [versions[0].name + "-student"]
    assert (runs / students[0] / "student.pt2").is_file()


def test_runs_is_git_ignored_and_every_default_points_there():
    from kdata.flows.config import DEFAULT_DATA, DEFAULT_OUT

    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    for path in ("runs/curated-v1/manifest.json", "runs/curated-20250101T020000Z-student/student.pt2"):
        ignored = subprocess.run(["git", "-C", str(ROOT), "check-ignore", "-q", path], check=False)
        assert ignored.returncode == 0, path
    cfg = yaml.safe_load((ROOT / "flows" / "config.yaml").read_text())
    declared = {d["entrypoint"]: d["parameters"] for d in yaml.safe_load((ROOT / "prefect.yaml").read_text())
                ["deployments"]}
    outs = [DEFAULT_OUT, DEFAULT_DATA, cfg["curate"]["out"], cfg["distill"]["data"],
            declared["flows/curate.py:curate"]["out"], declared["flows/distill.py:distill"]["data"]]
    assert all(o.startswith("runs/curated-") for o in outs), outs


def test_student_is_saved_beside_the_dataset_not_inside(chained):
    runs = chained["runs"]
    for ds in (p for p in runs.iterdir() if (p / "manifest.json").is_file()):
        listed = {f["path"] for f in read_manifest(ds)["files"]}
        assert not [p for p in ds.rglob("*") if "student" in p.name], ds
        assert verify(ds) == [] and listed
    student = next(p for p in runs.iterdir() if p.name.endswith("-student"))
    assert not (student / "manifest.json").exists()  # the glob runs/curated-* never takes it for a dataset


def test_distill_defaults_do_not_lower_accuracy_on_the_builtin_setup(chained):
    from kdata.training.train import TrainConfig

    student = next(p for p in chained["runs"].iterdir() if p.name.endswith("-student"))
    log = json.loads((student / "train_log.json").read_text())
    assert log["epochs"] == TrainConfig().epochs  # the trainer's default, not the flow's own
    assert log["student"] == "builtin:digits-student" and log["eval"] == "builtin:digits-test"
    # the defaults themselves must not hurt (the last epoch, not only the kept best weights)
    assert log["accuracy_last"] >= log["accuracy_before"], log["history"]
    assert log["accuracy"] >= log["accuracy_before"]
    assert chained["summary"].startswith("# kdata distill: improved"), chained["summary"]


def test_a_student_made_worse_is_reported_plainly(chained, tmp_path):
    from kdata.flows.distill import distill

    data = str(chained["runs"] / "curated-v1")
    state = distill(data=data, epochs=1, device="cpu", out=str(tmp_path / "one-epoch"), return_state=True)
    assert state.is_completed()
    r = state.result()
    assert r["accuracy_last"] < r["accuracy_before"]  # one epoch from a warm start lowers it
    assert r["training_made_worse"] is True and r["verdict"] in ("no gain", "worse")
    assert "worse" in r["message"] and "improved" not in r["message"].replace("NOT improved", "")
    md = distill_artifact(flow_run_id=state.state_details.flow_run_id)
    assert md.startswith(f"# kdata distill: {r['verdict']}") and "training made the student worse" in md


def test_outcome_words_each_case():
    from kdata.flows.distill import outcome

    worse = outcome({"accuracy_before": 0.83, "accuracy": 0.4375, "accuracy_last": 0.4375}, eval="E")
    assert worse["verdict"] == "worse" and worse["worse"] and "0.8300 before → 0.4375 after (-0.3925)" in worse["message"]
    kept = outcome({"accuracy_before": 0.83, "accuracy": 0.83, "accuracy_last": 0.70}, eval="E")
    assert kept["verdict"] == "no gain" and not kept["worse"] and "starting weights were kept" in kept["message"]
    better = outcome({"accuracy_before": 0.83, "accuracy": 0.88, "accuracy_last": 0.88}, eval="E")
    assert better["verdict"] == "improved" and better["message"].startswith("improved")
    assert outcome({"accuracy_before": None, "accuracy": None}, eval=None)["verdict"] == "not evaluated"


def _one_line_error(argv: list[str], cwd: Path, api: str) -> str:
    """Run a flow script; it must exit 2 with exactly one line on stderr (no traceback, no flow run)."""
    proc = subprocess.run([sys.executable, *argv], cwd=cwd, env=subproc_env(api), capture_output=True, text=True,
                          timeout=120, check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr + proc.stdout and "Flow run" not in proc.stderr
    return lines[0]


def test_bad_data_glob_is_one_line_exit_2(prefect_api, tmp_path):
    line = _one_line_error([str(ROOT / "flows" / "distill.py"), "--data", "runs/curated-*"], tmp_path, prefect_api)
    assert line.startswith("distill: error: --data runs/curated-*: no complete curated dataset")


def test_bad_curate_pool_is_one_line_exit_2(prefect_api, tmp_path):
    line = _one_line_error([str(ROOT / "flows" / "curate.py"), "--pool", "missing-pool", "--out", "runs/curated-v1"],
                           tmp_path, prefect_api)
    assert line.startswith("curate: error: missing-pool")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("flags,says", [
    (["--out", "runs/curated-v1/student"], "inside the curated dataset runs/curated-v1"),
    (["--student", "builtin:nope"], "unknown built-in model 'builtin:nope'"),
    (["--eval", "no-such-eval-set"], "no-such-eval-set: evaluation set not found"),
    (["--epochs", "0"], "--epochs 0: must be at least 1"),  # only what was given: distill has no --batch-size
    (["--device", "bogus"], "--device 'bogus': unknown device"),
    (["--data", "runs/curated-v9"], "--data runs/curated-v9: no such directory"),
])
def test_bad_distill_input_is_one_line_before_any_flow_run(chained, capsys, monkeypatch, flags, says):
    from kdata.flows.distill import main

    monkeypatch.chdir(chained["work"])
    before = sorted(p.name for p in chained["runs"].iterdir())
    assert main(["--data", "runs/curated-v1", *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0], err
    assert sorted(p.name for p in chained["runs"].iterdir()) == before
    assert not (chained["runs"] / "curated-v1" / "student").exists()


def test_config_sections_reject_unknown_keys(tmp_path):
    from kdata.flows.config import load_config

    cfg = yaml.safe_load((ROOT / "flows" / "config.yaml").read_text())
    cfg["distill"]["epoch"] = 3  # a typo of epochs
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(KdataError, match=r"distill: unknown key\(s\) \['epoch'\]"):
        load_config(tmp_path / "c.yaml")
