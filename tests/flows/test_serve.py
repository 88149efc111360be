"""The text distill flow keeps the best weights on the eval set (as ``kdata train`` does); student mistakes
that ``kdata train`` refuses up front are one line from ``flows/distill.py`` before any flow run; and
``kdata serve`` refuses a config whose scheduled runs cannot work (select, distill, cron, timezone) in
one line naming the file and section, before anything is served. Tiny real GPT-2 models built in the test,
the session's real Prefect server."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import prefect.main  # noqa: F401  (Prefect's console log handler binds sys.stderr when imported: not a test's capsys)
import pytest
import yaml

pytest.importorskip("transformers")

from tests.flows.server import api  # noqa: E402
from tests.helpers.text_models import text_assets, tiny_lm, write_jsonl  # noqa: E402


def other_tokenizer_lm(path: Path) -> Path:
    """A tiny GPT-2 whose byte tokenizer numbers the bytes in reverse order: every text splits into as
    many tokens as with the teacher's, but into other ids (a student ``kdata train`` refuses)."""
    return tiny_lm(path, n_embd=16, reverse_bytes=True)


@pytest.fixture(scope="module")
def lm_data(prefect_api, tmp_path_factory) -> dict:
    """Causal-LM shards curated by ``kdata select`` from the tiny teacher/student, a held-out set and a
    student with another tokenizer."""
    from kdata.cli import main

    d = text_assets()
    work = tmp_path_factory.mktemp("flowtext")
    data = work / "curated"
    assert main(["select", "--pool", str(d / "pool.jsonl"), "--teacher", f"hf:{d / 't'}", "--student",
                 f"hf:{d / 's'}", "--method", "random", "--budget", "0.5", "--out", str(data), "--device", "cpu",
                 "--quiet"]) == 0
    return {"d": d, "work": work, "data": data, "eval": write_jsonl(work / "held-out.jsonl", n=12),
            "othertok": other_tokenizer_lm(work / "othertok")}


def flow_runs() -> int:
    return api(lambda c: c.count_flow_runs())


@pytest.mark.parametrize("keep_last", [False, True])
def test_text_distill_flow_keeps_the_best_weights_like_kdata_train(lm_data, tmp_path, keep_last):
    distill = importlib.import_module("kdata.flows.distill")
    out = tmp_path / "student"
    res = distill.distill(data=str(lm_data["data"]), student=f"hf:{lm_data['d'] / 's'}", eval=str(lm_data["eval"]),
                          epochs=2, device="cpu", out=str(out), keep_last=keep_last)
    log = json.loads((out / "train_log.json").read_text())
    assert log["config"]["keep_best"] is (not keep_last)
    before, after = res["perplexity_before"], res["perplexity_after"]
    if keep_last:
        assert after == log["perplexity_last"]
    else:  # the best of the start and every epoch, so never worse than the start
        assert after == min(before, *(e["metric"] for e in log["per_epoch"])) and res["verdict"] != "worse"
    # the last epoch against the start, whichever weights were saved (as the image students' verdict says it)
    assert res["training_made_worse"] is (log["perplexity_last"] > before)
    if after == before and log["perplexity_last"] > before:
        assert "training made the student worse" in res["message"] and "starting weights were kept" in res["message"]


@pytest.mark.parametrize("student,says", [
    ("c1", "a classifier, but the shards hold causal lm soft labels"),
    ("othertok", "the student's tokenizer splits the text differently from the teacher's"),
])
def test_distill_entry_point_refuses_a_text_student_kdata_train_refuses(lm_data, tmp_path, capsys, student, says):
    distill = importlib.import_module("kdata.flows.distill")
    path = lm_data["othertok"] if student == "othertok" else lm_data["d"] / student
    before = flow_runs()
    rc = distill.main(["--data", str(lm_data["data"]), "--student", f"hf:{path}", "--eval", str(lm_data["eval"]),
                       "--out", str(tmp_path / "st"), "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and says in err[0], (rc, err)
    assert flow_runs() == before and not (tmp_path / "st").exists()


def serve_config_file(lm_data, tmp_path, **change) -> Path:
    """A served config over the tiny LMs; ``change``: section → keys to replace (None drops a key)."""
    d = lm_data["d"]
    cfg = {"select": {"pool": str(d / "pool.jsonl"), "teacher": f"hf:{d / 't'}", "student": f"hf:{d / 's'}",
                      "method": "random", "budget": "0.5"},
           "run": {"device": "cpu"},
           "curate": {"name": "textchk", "out": str(tmp_path / "runs" / "text-{version}"), "cron": "0 3 * * *",
                      "timezone": "UTC"},
           "distill": {"name": "textchk", "data": str(tmp_path / "runs" / "text-*"), "student": f"hf:{d / 's'}",
                       "eval": str(lm_data["eval"]), "cron": "0 5 * * *", "timezone": "UTC"}}
    for section, keys in change.items():
        for k, v in keys.items():
            if v is None:
                cfg[section].pop(k, None)
            else:
                cfg[section][k] = v
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def serve_main(argv: list[str]) -> int | None:
    """``kdata.flows.serve.main`` in a daemon thread: a config that gets served (which blocks) fails the
    test instead of hanging it."""
    import threading

    serve, box = importlib.import_module("kdata.flows.serve"), {}
    t = threading.Thread(target=lambda: box.update(rc=serve.main(argv)), daemon=True)
    t.start()
    t.join(timeout=60)
    assert not t.is_alive(), "the config was served"
    return box.get("rc")


def served(name: str) -> bool:
    from prefect.exceptions import ObjectNotFound

    try:
        api(lambda c: c.read_deployment_by_name(name))
    except ObjectNotFound:
        return False
    return True


@pytest.mark.parametrize("change,says", [
    ({"select": {"method": "miniplm"}}, "select: --method miniplm on causal LMs needs a reference model"),
    ({"select": {"teacher": "hf:/nonexistent/teacher"}}, "select: --teacher hf:/nonexistent/teacher: model directory "
                                                         "not found"),
    ({"distill": {"student": "hf:/nonexistent/student"}}, "distill: /nonexistent/student: model directory not found"),
    ({"distill": {"student": "OTHERTOK", "data": "DATA"}}, "distill: "),  # the dataset exists: the tokenizer check
    ({"distill": {"student": "C1", "data": "DATA"}}, "distill: hf:"),
    ({"curate": {"cron": "0 25 * * *"}}, "curate: cron '0 25 * * *': not a valid cron expression"),
    ({"distill": {"timezone": "Mars/Olympus"}}, "distill: timezone 'Mars/Olympus': unknown time zone"),
    ({"curate": {"cron": None}}, "curate: timezone 'UTC' without cron"),
])
def test_kdata_serve_refuses_a_config_whose_runs_cannot_work(lm_data, tmp_path, capsys, change, says):
    repl = {"OTHERTOK": f"hf:{lm_data['othertok']}", "C1": f"hf:{lm_data['d'] / 'c1'}", "DATA": str(lm_data["data"])}
    change = {s: {k: repl.get(v, v) for k, v in keys.items()} for s, keys in change.items()}
    path = serve_config_file(lm_data, tmp_path, **change)
    before = flow_runs()
    rc = serve_main(["--config", str(path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and f"{path}: {says}" in err[0], (rc, err)
    if change.get("distill", {}).get("student") == repl["OTHERTOK"]:
        assert "splits the text differently" in err[0]
    if change.get("distill", {}).get("student") == repl["C1"]:
        assert "a classifier, but the shards hold causal lm soft labels" in err[0]
    assert not served("curate/textchk") and not served("distill/textchk") and flow_runs() == before


def test_kdata_serve_checks_pass_a_config_whose_dataset_is_not_written_yet(lm_data, tmp_path):
    """The distill data is what the curate runs will write: the student and eval set are checked alone."""
    from kdata.flows.config import load_config

    serve = importlib.import_module("kdata.flows.serve")
    path = serve_config_file(lm_data, tmp_path, distill={"keep_last": True})
    serve.check_inputs(path, load_config(path))
    deps = serve.deployments(path)
    assert [d.schedules[0].schedule.cron for d in deps] == ["0 3 * * *", "0 5 * * *"]
    assert deps[1].parameters["keep_last"] is True and deps[1].parameters["data"] == str(tmp_path / "runs" / "text-*")
    assert not (tmp_path / "runs").exists()  # nothing written by the checks


def test_kdata_serve_bad_cron_is_one_line_exit_2_from_the_cli(lm_data, prefect_api, tmp_path):
    import subprocess
    import sys

    from tests.flows.server import subproc_env

    path = serve_config_file(lm_data, tmp_path, curate={"cron": "0 25 * * *"})
    proc = subprocess.run([sys.executable, "-m", "kdata.cli", "serve", "--config", str(path)], capture_output=True,
                          text=True, env=subproc_env(prefect_api), timeout=120, check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, (proc.returncode, proc.stderr[-2000:])
    assert f"{path}: curate: cron '0 25 * * *': not a valid cron expression" in lines[0]


def test_generate_keep_last_without_distill_is_one_line(prefect_api, tmp_path, capsys):
    gen = importlib.import_module("kdata.flows.generate")
    rc = gen.main(["--prompts", str(tmp_path / "p.jsonl"), "--out", str(tmp_path / "g"), "--keep-last"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--keep-last: a --distill option" in err[0], (rc, err)
