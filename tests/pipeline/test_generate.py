"""``kdata generate``'s pipeline on tiny real GPT-2 models: resumable prompt shards, every candidate
accounted for (empty generations quarantined), prompts validated up front (one line, exit 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch

from kdata.cli import main
from kdata.dataset.writer import read_manifest, read_shards, verify
from kdata.models.hf_generate import DecodeConfig
from kdata.pipeline.generate import GenerateConfig, work_dir
from kdata.pipeline.generate_run import run_generate
from tests.helpers.text_models import tiny_lm


def eos_prone_lm(path: Path, *, eos_logit: float = 5.0) -> Path:
    """A tiny GPT-2 that often ends at once: the final layer norm's bias points at the EOS embedding."""
    from transformers import GPT2LMHeadModel

    tiny_lm(path, seed=4)
    model = GPT2LMHeadModel.from_pretrained(path)
    with torch.no_grad():
        w = model.lm_head.weight[model.config.eos_token_id]
        model.transformer.ln_f.weight.mul_(0.05)
        model.transformer.ln_f.bias.copy_(w / w.norm() ** 2 * eos_logit)
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    return eos_prone_lm(tmp_path_factory.mktemp("gen-pipe") / "teacher")


def write_prompts(path: Path, n: int = 5) -> Path:
    path.write_text("".join(json.dumps({"id": f"q{i}", "prompt": f"prompt number {i}"}) + "\n" for i in range(n)))
    return path


def _cfg(teacher: Path, prompts: Path, **kw) -> GenerateConfig:
    return GenerateConfig(teacher=f"hf:{teacher}", prompts=str(prompts), per_prompt=4, shard_size=2,
                          decode=DecodeConfig(max_new_tokens=6, seed=0), **kw)


class Killed(Exception):
    pass


def test_resume_after_a_killed_shard_gives_the_uninterrupted_result(teacher, tmp_path):
    prompts = write_prompts(tmp_path / "p.jsonl")
    cfg = _cfg(teacher, prompts)
    out = tmp_path / "gen"

    def kill_after_two(i, path):
        if i == 1:
            raise Killed

    with pytest.raises(Killed):
        run_generate(cfg, out=out, device="cpu", on_shard=kill_after_two)
    work = work_dir(out)
    assert not out.exists() and len(list(work.glob("*.done.json"))) == 2
    # shard 1 killed before its marker: its file without a marker is regenerated, not trusted
    next(work.glob("shard-00001-*.done.json")).unlink()
    report = run_generate(cfg, out=out, device="cpu")
    assert report.info["shards"] == {"n": 3, "reused": 1}
    assert not work.exists() and verify(out) == []
    fresh = run_generate(cfg, out=tmp_path / "fresh", device="cpu")
    assert [f["sha256"] for f in read_manifest(out)["files"]] == [f["sha256"] for f in read_manifest(tmp_path / "fresh")["files"]]
    assert fresh.counts == report.counts
    assert run_generate(cfg, out=out, device="cpu").status == "already complete"


def test_progress_counts_the_prompts_generated_for(teacher, tmp_path):
    heard = []
    run_generate(_cfg(teacher, write_prompts(tmp_path / "p.jsonl")), out=tmp_path / "gen", device="cpu",
                 progress=lambda stage, done=None, total=None: heard.append((stage, done, total)))
    assert heard == [("generating", 0, 5), ("generating", 2, 5), ("generating", 4, 5), ("generating", 5, 5)]


def test_every_candidate_is_kept_or_quarantined_and_counts_add_up(teacher, tmp_path):
    prompts = write_prompts(tmp_path / "p.jsonl", n=6)
    out = tmp_path / "gen"
    report = run_generate(_cfg(teacher, prompts), out=out, device="cpu", batch_size=5)
    c = report.counts
    assert c["n_in"] == 24 == c["kept"] + c["rejected"] + c["quarantined"]
    assert c["quarantined"] > 0 and c["kept"] > 0  # the EOS-prone teacher writes some empty candidates
    dec = pq.read_table(out / "decisions.parquet")
    assert sorted(dec.column("sample_id").to_pylist()) == sorted(f"q{i}:{j}" for i in range(6) for j in range(4))
    q = dec.filter(pc.equal(dec.column("decision"), "quarantined"))
    assert set(q.column("reason").to_pylist()) == {"empty_generation"}
    rows = read_shards(out)
    assert rows.num_rows == c["kept"] and all(t.strip() for t in rows.column("text").to_pylist())
    assert set(rows.column("kind").to_pylist()) == {"synthetic"}
    assert rows.column("parent_id").to_pylist() == [s.split(":")[0] for s in rows.column("sample_id").to_pylist()]
    assert {"prompt", "temperature", "top_p", "max_new_tokens", "seed", "gen_token_logprobs",
            "gen_teacher_nll"} <= set(rows.column_names)
    nll = rows.column("gen_teacher_nll").to_pylist()
    lps = rows.column("gen_token_logprobs").to_pylist()
    assert all(abs(n + sum(lp) / len(lp)) < 1e-4 for n, lp in zip(nll, lps))
    excluded = pq.read_table(out / "excluded.parquet")
    assert sorted(excluded.column("sample_id").to_pylist()) == sorted(q.column("sample_id").to_pylist())
    card = (out / "README.md").read_text()
    assert "## Generation" in card and "temperature 1.0, top-p 0.95" in card and "prompt number 0" in card
    # the card says what a generated dataset is: no budget, no soft labels yet, a text-generation task
    assert "None" not in card and "top-None" not in card and "budget of" not in card
    assert "holds no soft labels yet" in card and "- text-generation" in card
    m = read_manifest(out)
    assert m["generate"]["prompts"]["n"] == 6 and m["generate"]["counts"]["quarantined"] == c["quarantined"]


@pytest.mark.parametrize("lines, problem", [
    (['{"id": "a", "prompt": "x"}', "{not json"], "line 2: not JSON"),
    (['{"id": "a"}'], "line 1: missing 'prompt'"),
    (['{"prompt": "x"}'], "line 1: missing 'id'"),
    (['{"id": "a", "prompt": "x"}', "", '{"id": "a", "prompt": "y"}'], "line 3: duplicate id 'a' (first on line 1)"),
    (['{"id": "a", "prompt": 3}'], "line 1: 'prompt' must be a string"),
    (['["a", "x"]'], "line 1: a JSON list"),
])
def test_bad_prompts_file_is_one_line_exit_2(teacher, tmp_path, capsys, lines, problem):
    bad = tmp_path / "prompts.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    rc = main(["generate", "--teacher", f"hf:{teacher}", "--prompts", str(bad), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and f"{bad}: {problem}" in err[0], err
    assert not (tmp_path / "o").exists()


def test_bad_options_before_any_work(teacher, tmp_path, capsys):
    prompts = write_prompts(tmp_path / "p.jsonl")
    for extra, msg in ((["--per-prompt", "0"], "--per-prompt 0"), (["--top-p", "1.5"], "--top-p 1.5"),
                       (["--critic", str(tmp_path / "nope")], "--critic directory not found")):
        rc = main(["generate", "--teacher", f"hf:{teacher}", "--prompts", str(prompts), "--out",
                   str(tmp_path / "o"), *extra])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and msg in err[0], err


def stats_critic(path: Path, *, recall: float = 0.8) -> Path:
    """A text critic on the statistics alone, fitted on made-up rows (accept = low teacher NLL)."""
    import numpy as np

    from kdata.selection.critic_model import fit_critic
    from kdata.selection.critic_text import TEXT_STATS

    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, len(TEXT_STATS) + 1)) + np.array([5.0, 5.5, 3.0, 0.0, 6.0, 0.5])
    crit = fit_critic(X, X[:, 0] + rng.normal(0, 0.3, 200) < 5.0,
                      feature_names=[*TEXT_STATS, "nll_gap"], recall=recall)
    crit.text = {"kind": "text"}
    return crit.save(path)


def test_an_image_score_critic_is_refused_before_any_work(teacher, tmp_path, capsys):
    import numpy as np

    from kdata.selection.critic_model import fit_critic

    rng = np.random.default_rng(1)
    X = rng.normal(size=(120, 3))
    image_critic = fit_critic(X, X[:, 0] > 0, feature_names=["teacher_conf", "kl_ts", "student_entropy"],
                              recall=0.8).save(tmp_path / "image-critic")
    student = tiny_lm(tmp_path / "student", seed=8)
    prompts = write_prompts(tmp_path / "p.jsonl")
    rc = main(["generate", "--teacher", f"hf:{teacher}", "--student", f"hf:{student}", "--prompts", str(prompts),
               "--critic", str(image_critic), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and f"{image_critic}: an image-score critic" in err[0], err
    assert not (tmp_path / "o").exists()


def test_with_a_critic_every_candidate_is_kept_rejected_or_quarantined(teacher, tmp_path, capsys):
    import json

    import numpy as np

    from kdata.cli import main

    student = tiny_lm(tmp_path / "student", seed=8)
    prompts = write_prompts(tmp_path / "p.jsonl", n=6)
    out = tmp_path / "gen"
    cfg = _cfg(teacher, prompts, student=f"hf:{student}", critic=str(stats_critic(tmp_path / "critic")))
    c = run_generate(cfg, out=out, device="cpu").counts
    assert c["n_in"] == 24 == c["kept"] + c["rejected"] + c["quarantined"]
    dec = pq.read_table(out / "decisions.parquet")
    thr = read_manifest(out)["generate"]["critic"]["threshold"]
    by = {d: dec.filter(pc.equal(dec.column("decision"), d)) for d in ("kept", "rejected", "quarantined")}
    assert (by["kept"].column("score_critic").to_numpy() >= np.float32(thr) - 1e-6).all()
    assert (by["rejected"].column("score_critic").to_numpy() < np.float32(thr) + 1e-6).all()
    assert set(by["rejected"].column("reason").to_pylist()) <= {"critic_reject"}
    excluded = pq.read_table(out / "excluded.parquet")
    assert excluded.num_rows == c["rejected"] + c["quarantined"]
    assert set(excluded.column("reason").to_pylist()) <= {"critic_reject", "empty_generation", "too_short"}
    # inspect: no top-1 agreement without predictions, kept rows by P(accept), rejected texts from excluded.parquet
    capsys.readouterr()
    assert main(["inspect", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["agreement"] == {} and c["rejected"] > 0
    p = [r["score_critic"] for r in info["examples"]]
    assert p == sorted(p, reverse=True) and p[0] == by["kept"].column("score_critic").to_numpy().max()
    texts = dict(zip(excluded.column("sample_id").to_pylist(), excluded.column("text").to_pylist()))
    shown = info["text"]["rejected_texts"]
    assert shown and all(r["text"] == " ".join(texts[r["sample_id"]].split())[:len(r["text"])] for r in shown)
    # everything empty: nothing to score, every candidate quarantined
    silent = eos_prone_lm(tmp_path / "silent", eos_logit=400.0)
    c = run_generate(_cfg(silent, prompts, student=f"hf:{student}", critic=cfg.critic), out=tmp_path / "empty",
                     device="cpu").counts
    assert c == {**c, "n_in": 24, "kept": 0, "rejected": 0, "quarantined": 24}


def test_best_round_names_the_lowest_perplexity_and_the_rounds_that_raised_it():
    from kdata.pipeline.generate_rounds import best_round

    summary = [{"round": 1, "student_in": "hf:s", "student": "o/round-1-student", "perplexity_before": 400.0,
                "perplexity_after": 300.7, "eval": "val.jsonl"},
               {"round": 2, "student_in": "hf:o/round-1-student", "student": "o/round-2-student",
                "perplexity_before": 300.7, "perplexity_after": 326.7}]
    assert best_round(summary) == {"round": 1, "student": "hf:o/round-1-student", "perplexity": 300.7,
                                   "chosen_on": "val.jsonl", "worse_rounds": [2], "message": "the lowest held-out perplexity (300.7) is "
                                                                   "round 1's student, hf:o/round-1-student"}
    assert best_round([{**r, "perplexity_after": None} for r in summary]) is None


def test_best_round_is_the_starting_student_when_every_round_raised_the_perplexity():
    """The reviewer's run: 203.2 → 235.6 → 306.3; the input student (round 0) is the best, and a tie keeps it."""
    from kdata.pipeline.generate_rounds import best_round

    summary = [{"round": 1, "student_in": "hf:models/student", "student": "o/round-1-student",
                "perplexity_before": 203.2, "perplexity_after": 235.6},
               {"round": 2, "student_in": "hf:o/round-1-student", "student": "o/round-2-student",
                "perplexity_before": 235.6, "perplexity_after": 306.3}]
    best = best_round(summary)
    assert (best["round"], best["student"], best["perplexity"], best["worse_rounds"]) == \
        (0, "hf:models/student", 203.2, [1, 2])
    assert "keep the original student, hf:models/student" in best["message"]
    tie = [{**summary[0], "perplexity_after": 203.2}]
    assert best_round(tie)["round"] == 0
