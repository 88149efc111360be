"""The ``generate`` flow end to end against the session's real Prefect server, on tiny real GPT-2 models:
shards cached per prompt shard, critic → write → select → distill."""

from __future__ import annotations

import csv
import json
import os
import time
import uuid
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from kdata.cli import main
from kdata.core.errors import KdataError
from kdata.dataset.writer import read_manifest, read_shards, verify
from tests.helpers.text_models import tiny_lm, write_jsonl

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def flow_mod(prefect_api):
    import importlib

    return importlib.import_module("kdata.flows.generate")


def _labels(gen: Path, path: Path) -> Path:
    """Stand-in for human labels: accept when the teacher found the candidate likelier than the median."""
    t = read_shards(gen)
    nll = t.column("gen_teacher_nll").to_numpy(zero_copy_only=False)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["sample_id", "accept"])
        w.writerows([s, int(v < np.median(nll))] for s, v in zip(t.column("sample_id").to_pylist(), nll))
    return path


def test_generate_flow_end_to_end_with_cached_shards(flow_mod, tmp_path):
    T, S, E = (f"hf:{tiny_lm(tmp_path / n, seed=i)}" for i, n in enumerate(("teacher", "student", "embedder")))
    prompts = tmp_path / "prompts.jsonl"
    tag = uuid.uuid4().hex[:6]  # new prompts per session: the first run cannot hit an earlier session's cache
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"the cat {tag} {i}"}) + "\n" for i in range(10)))
    params = {"teacher": T, "prompts": str(prompts), "per_prompt": 4, "shard_size": 4, "student": S,
              "decode": {"max_new_tokens": 8, "seed": 3}}
    first = flow_mod.generate(params=params, out=str(tmp_path / "a"), run={"device": "cpu"})
    assert first["counts"]["n_in"] == 40 and first["shards"].get("Completed") == 3
    assert verify(tmp_path / "a") == [] and first["curated"]["n_in"] == first["counts"]["kept"]

    crit = tmp_path / "critic"
    assert main(["critic", "fit", "--scores-from", str(tmp_path / "a"), "--teacher", T, "--student", S,
                 "--labels", str(_labels(tmp_path / "a", tmp_path / "labels.csv")), "--embedder", E,
                 "--out", str(crit), "--device", "cpu"]) == 0

    held_out = write_jsonl(tmp_path / "held-out.jsonl", n=12)
    from kdata.flows.config import result_storage

    records = sorted(result_storage().glob("generate-shard-*"))
    for r in records:  # as if written yesterday: the cached rerun reads them, so it marks them used
        os.utime(r, (time.time() - 86400,) * 2)
    started = time.time()
    second = flow_mod.generate(params={**params, "critic": str(crit)}, out=str(tmp_path / "b"),
                               run={"device": "cpu"}, distill={"epochs": 1, "eval": str(held_out)})
    assert second["shards"] == {"Cached": 3}  # same prompts and settings: no shard generated again
    assert sum(r.stat().st_mtime >= started - 1 for r in records) >= 3
    b = tmp_path / "b"
    assert [f["sha256"] for f in read_manifest(b)["files"]] != [] and verify(b) == []
    c = second["counts"]
    assert c["n_in"] == 40 == c["kept"] + c["rejected"] + c["quarantined"]
    thr = read_manifest(b)["generate"]["critic"]["threshold"]
    dec = pq.read_table(b / "decisions.parquet")
    kept = dec.filter(pc.equal(dec.column("decision"), "kept"))
    assert (kept.column("score_critic").to_numpy() >= np.float32(thr) - 1e-6).all()
    assert second["curated"]["kept"] == c["kept"]
    assert Path(second["student"]["out"]).joinpath("model.safetensors").is_file()
    assert second["student"]["n_train"] == c["kept"]
    # the student's verdict, worded as the distill flow words it (a worse student says WORSE)
    st = second["student"]
    before, after = st["perplexity_before"], st["perplexity_after"]
    # the weights that score best on the eval set are kept, as kdata train keeps them (never worse than the start)
    trained = json.loads((Path(st["out"]) / "train_log.json").read_text())
    assert trained["config"]["keep_best"] is True and after <= before
    assert before is not None and after is not None and st["eval"] == str(held_out)
    assert st["verdict"] == ("worse" if after > before else "improved" if after < before else "no gain")
    assert st["worse"] is (after > before)
    assert st["message"].startswith("WORSE: the student got worse" if after > before else ("improved", "NOT improved"))


def test_shard_task_uses_the_shard_it_is_given_without_reading_the_prompts_file(flow_mod, tmp_path):
    """The flow reads the prompts once and hands each task its shard: with hundreds of shards, a task
    that parsed the whole file again would make the flow quadratic in the prompts."""
    teacher = f"hf:{tiny_lm(tmp_path / 'teacher', seed=0)}"
    params = {"teacher": teacher, "prompts": str(tmp_path / "gone.jsonl"), "per_prompt": 2, "shard_size": 2,
              "decode": {"max_new_tokens": 4, "seed": 1}}
    shard = [{"id": f"q{i}", "prompt": f"a dog {uuid.uuid4().hex[:6]}"} for i in range(2)]
    out = flow_mod.generate_shard_task.fn(params, 0, uuid.uuid4().hex, "cpu", 2, shard)
    rows = pq.read_table(out["path"], columns=["parent_id"]).column("parent_id").to_pylist()
    assert sorted(rows) == ["q0", "q0", "q1", "q1"]


def test_prefect_yaml_entry_point_loads():
    import importlib.util

    spec = importlib.util.spec_from_file_location("flows_generate", ROOT / "flows" / "generate.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.generate.name == "generate"


def test_a_student_the_critic_was_not_fitted_with_is_one_line_before_the_flow_runs(flow_mod, tmp_path, capsys):
    """As ``kdata generate``: the critic's student features must come from the student it was fitted with."""
    from kdata.pipeline.generate_run import spec_checksum
    from kdata.selection.critic_model import fit_critic
    from kdata.selection.critic_text import TEXT_STATS

    T, S, O = (f"hf:{tiny_lm(tmp_path / n, seed=i)}" for i, n in enumerate(("teacher", "student", "other")))
    rng = np.random.default_rng(0)
    X = rng.normal(size=(80, len(TEXT_STATS) + 1))
    crit = fit_critic(X, X[:, 0] > 0, feature_names=[*TEXT_STATS, "nll_gap"], recall=0.8)
    crit.text = {"kind": "text", "teacher": T, "teacher_checksum": spec_checksum(T), "student": S,
                 "student_checksum": spec_checksum(S)}
    crit.save(tmp_path / "critic")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"id": "p0", "prompt": "the cat"}\n')
    argv = ["--prompts", str(prompts), "--teacher", T, "--critic", str(tmp_path / "critic"), "--device", "cpu",
            "--max-new-tokens", "4"]
    assert flow_mod.main([*argv, "--student", O, "--out", str(tmp_path / "g")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"the critic was fitted on the statistics of student {S}" in err[0], err
    assert not (tmp_path / "g").exists()
    with pytest.raises(KdataError, match=f"the student in use, {O}"):  # the flow itself, called directly
        flow_mod.generate(params={"teacher": T, "prompts": str(prompts), "student": O,
                                  "critic": str(tmp_path / "critic"), "decode": {"max_new_tokens": 4}},
                          out=str(tmp_path / "g"), run={"device": "cpu"})
    assert not (tmp_path / "g").exists()


def test_cached_model_checks_the_checksum_the_flow_began_with():
    """One cache for the flows' tasks: reused while the checksum matches, reloaded when the cached model
    is not the expected one, and a model whose files changed mid-flow is one clear error."""
    from types import SimpleNamespace

    from kdata.flows.model_cache import cached_model

    on_disk = {"sum": "sha256:aaaa"}
    loads = []

    def load(spec, *, device, precision):
        loads.append((spec, device, precision))
        return SimpleNamespace(checksum=on_disk["sum"])

    spec = f"hf:/nowhere/{uuid.uuid4().hex}"
    first = cached_model(spec, device="cpu", checksum="sha256:aaaa", load=load, precision="fp32")
    assert cached_model(spec, device="cpu", checksum="sha256:aaaa", load=load, precision="fp32") is first
    assert len(loads) == 1
    on_disk["sum"] = "sha256:bbbb"  # replaced while the flow ran
    with pytest.raises(KdataError, match="model changed while the flow ran"):
        cached_model(spec, device="cpu", checksum="sha256:bbbb".replace("b", "c"), load=load, precision="fp32")
    assert cached_model(spec, device="cpu", checksum="sha256:bbbb", load=load, precision="fp32").checksum == "sha256:bbbb"
