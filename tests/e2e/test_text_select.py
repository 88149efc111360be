"""``kdata select`` on a text pool with tiny transformers LMs built in the test: miniplm, ddk, default and
random end to end; the shards' per-token soft labels re-derived from the teacher; bad input is one line."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
import torch

pytest.importorskip("transformers")

from kdata.cli import main  # noqa: E402
from kdata.models.hf import load_hf  # noqa: E402
from kdata.pipeline.config import RunOptions, SelectConfig  # noqa: E402
from kdata.pipeline.run import run_select  # noqa: E402
from tests.helpers.text_models import text_assets  # noqa: E402

pytestmark = pytest.mark.usefixtures("warning_lines")  # kdata's warnings read from stderr, as the CLI prints them


def _cfg(method: str, *, reference: bool | None = None, student: str = "s", **kw) -> SelectConfig:
    d = text_assets()
    if reference is None:  # a reference is refused where the chain does not read it
        reference = method in ("miniplm", "default")
    return SelectConfig(pool=str(d / "pool.jsonl"), teacher=f"hf:{d / 't'}", student=f"hf:{d / student}",
                        reference=f"hf:{d / 'r'}" if reference else None, method=method, budget="0.3", **kw)


def _run(cfg, tmp_path, name):
    out = tmp_path / name
    report = run_select(cfg, out=str(out), opts=RunOptions(device="cpu", num_workers=0))
    return out, report


@pytest.mark.parametrize("method", ["miniplm", "ddk", "default", "random"])
def test_text_select_runs_end_to_end(method, tmp_path):
    out, report = _run(_cfg(method), tmp_path, method)
    c = report.counts
    assert c["n_in"] == 62 and c["quarantined"] == 2 and c["kept"] == 18
    assert c["n_in"] == c["kept"] + c["rejected"] + c["quarantined"]
    if method == "default":  # MiniPLM with the budget spread over the pool's domains
        assert report.info["methods"] == ["miniplm"] and report.info["balance"] == "domain"
    shards = pads.dataset(str(out / "data"), format="parquet").to_table()
    assert shards.num_rows == 18 and shards.column("text").null_count == 0
    with_ref = method in ("miniplm", "default")  # a reference is given where the chain reads it
    for col in ("teacher_nll", "student_nll", "n_tokens", "input_ids", "teacher_topk_ids",
                "teacher_topk_logprobs", "teacher_rest_mass") + (("reference_nll",) if with_ref else ()):
        assert col in shards.column_names and shards.column(col).null_count == 0, col
    assert str(shards.schema.field("teacher_topk_logprobs").type) == "list<element: list<element: halffloat>>"
    manifest = json.loads((out / "manifest.json").read_text())
    scoring = manifest["scoring"] if "scoring" in manifest else manifest["extra"]["scoring"]
    assert scoring["kind"] == "causal_lm" and scoring["token_topk"] == 8 and scoring["tokenizer_shared"] is True
    assert scoring["max_length"] == 128 and ("reference" in manifest["models"]) == with_ref
    decisions = pq.read_table(out / "decisions.parquet")
    assert decisions.num_rows == 62
    assert (out / "README.md").is_file() and (out / "report.html").is_file()


def test_miniplm_keeps_the_top_reference_minus_teacher_loss(tmp_path):
    out, _ = _run(_cfg("miniplm"), tmp_path, "m")
    d = pq.read_table(out / "decisions.parquet").to_pandas()
    scored = d[d.decision != "quarantined"]
    kept = set(scored[scored.decision == "kept"].sample_id)
    top = set(scored.sort_values("score_miniplm", ascending=False).sample_id[:18])
    assert kept == top
    shards = pads.dataset(str(out / "data"), format="parquet").to_table().to_pandas()
    np.testing.assert_allclose(shards.score_miniplm, shards.reference_nll - shards.teacher_nll, atol=1e-5)


def test_stored_token_soft_labels_are_the_teachers(tmp_path):
    out, _ = _run(_cfg("random"), tmp_path, "r")
    row = pads.dataset(str(out / "data"), format="parquet").to_table().slice(0, 1).to_pylist()[0]
    teacher = load_hf(text_assets() / "t")
    ids = teacher.tokenizer(row["text"])["input_ids"]
    assert row["input_ids"] == ids
    with torch.inference_mode():
        logp = torch.log_softmax(teacher.model(input_ids=torch.tensor([ids])).logits[0, :-1].float(), -1)
    top = logp.topk(8, -1)
    assert row["teacher_topk_ids"] == top.indices.tolist()
    stored = np.asarray(row["teacher_topk_logprobs"], dtype=np.float32)
    np.testing.assert_allclose(stored, top.values.numpy(), rtol=2e-3, atol=5e-3)  # float16
    rest = 1 - top.values.exp().sum(-1).numpy()
    np.testing.assert_allclose(row["teacher_rest_mass"], np.clip(rest, 0, None), atol=2e-3)
    nll = -logp.gather(1, torch.tensor(ids[1:])[:, None]).mean().item()
    assert row["teacher_nll"] == pytest.approx(nll, abs=1e-4)


def test_different_student_tokenizer_is_said_once_and_kl_left_null(tmp_path, capsys):
    out, report = _run(_cfg("ddk", student="r", reference=False), tmp_path, "ddk2")
    err = capsys.readouterr().err
    assert err.count("tokenise differently") == 1
    assert err.count("warning: student") == 1 and "kdata train refuses this student" in err
    shards = pads.dataset(str(out / "data"), format="parquet").to_table()
    assert shards.column("kl_ts").null_count == shards.num_rows == report.counts["kept"]
    assert shards.column("student_nll").null_count == 0


def _cli(args, tmp_path, capsys):
    rc = main(["select", *args, "--out", str(tmp_path / "bad"), "--quiet", "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    return rc, err


def test_bad_text_input_is_one_line_exit_2(tmp_path, capsys):
    d = text_assets()
    pool, t, s = str(d / "pool.jsonl"), f"hf:{d / 't'}", f"hf:{d / 's'}"
    cases = [
        (["--pool", "builtin:digits-test", "--teacher", t, "--student", s], "holds images"),
        (["--pool", pool], "holds text"),
        (["--pool", pool, "--teacher", t, "--student", s, "--method", "miniplm"], "needs a reference"),
        (["--pool", pool, "--teacher", t, "--student", f"hf:{d / 'c1'}"], "classifier"),
        (["--pool", pool, "--teacher", t, "--student", f"hf:{tmp_path}"], "no config.json"),
    ]
    for args, words in cases:
        rc, err = _cli(args, tmp_path, capsys)
        assert rc == 2 and words in err and len(err.splitlines()) == 1, (args, err)
    assert not (tmp_path / "bad").exists()
