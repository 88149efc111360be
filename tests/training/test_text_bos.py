"""A tokenizer that adds BOS (Llama / Mistral / Gemma / OPT style): scoring, the text trainer and
``kdata generate`` tokenise the same way — special tokens as the tokenizer adds them by default.

Tiny real GPT-2 LMs (tests/helpers/text_models.py) whose byte tokenizer is given a
``TemplateProcessing("<|endoftext|> $A")`` post-processor, so every encoding starts with BOS."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow.dataset as pads
import pytest
import torch

pytest.importorskip("transformers")

from kdata.models.hf import load_text_model  # noqa: E402
from kdata.pipeline.config import RunOptions, SelectConfig  # noqa: E402
from kdata.pipeline.run import run_select  # noqa: E402
from kdata.training.text import TextTrainConfig, train_text  # noqa: E402
from kdata.training.text_data import TextShards  # noqa: E402
from kdata.training.text_losses import bucket_kl  # noqa: E402
from tests.helpers.text_models import EOS, tiny_lm, write_jsonl  # noqa: E402


def _add_bos(path):
    from tokenizers import Tokenizer, processors

    f = path / "tokenizer.json"
    tk = Tokenizer.from_file(str(f))
    bos = tk.token_to_id(EOS)
    tk.post_processor = processors.TemplateProcessing(single=f"{EOS} $A", pair=f"{EOS} $A {EOS} $B",
                                                      special_tokens=[(EOS, bos)])
    tk.save(str(f))
    return path


@pytest.fixture(scope="module")
def bos_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("bos")
    teacher = _add_bos(tiny_lm(d / "t", seed=0))
    student = _add_bos(tiny_lm(d / "s", seed=1, n_embd=16))
    pool = write_jsonl(d / "pool.jsonl", n=40)
    cfg = SelectConfig(pool=str(pool), teacher=f"hf:{teacher}", student=f"hf:{student}", method="kd3", budget="0.5")
    out = d / "out"
    run_select(cfg, out=str(out), opts=RunOptions(device="cpu", num_workers=0))
    return {"dir": d, "teacher": teacher, "student": student, "out": out}


def _scoring_way_perplexity(model_dir, texts, max_length):
    """exp(total NLL / predicted tokens) with ids as scoring makes them: ``tokenizer(text)`` (its default
    special tokens), truncated to ``max_length``; one text at a time."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
    total, count = 0.0, 0
    with torch.inference_mode():
        for t in texts:
            ids = tok(t, truncation=True, max_length=max_length)["input_ids"]
            assert ids[0] == tok.bos_token_id  # the post-processor really adds BOS
            x = torch.tensor([ids])
            logp = torch.log_softmax(model(input_ids=x).logits[0, :-1].float(), dim=-1)
            total += float(-logp.gather(1, x[0, 1:, None]).sum())
            count += len(ids) - 1
    return math.exp(total / count)


def test_a_bos_tokenizer_trains_and_its_perplexity_is_measured_as_scoring_does(bos_run, tmp_path):
    shards = pads.dataset(str(bos_run["out"] / "data"), format="parquet").to_table()
    texts = shards.column("text").to_pylist()
    ids = shards.column("input_ids").to_pylist()
    bos = load_text_model(f"hf:{bos_run['student']}", device="cpu", precision="fp32").tokenizer.bos_token_id
    assert texts and all(x[0] == bos for x in ids)  # scoring stored BOS first

    # the stored soft labels line up with the stored ids: the teacher reproduces them on a trainer batch
    from transformers import AutoModelForCausalLM

    teacher = AutoModelForCausalLM.from_pretrained(str(bos_run["teacher"])).eval()
    batch = next(TextShards(bos_run["out"], kind="causal_lm", batch_size=8, pad_id=bos).batches(epoch=0))
    assert int(batch["input_ids"][0, 0]) == bos
    with torch.inference_mode():
        logits = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert float(bucket_kl(logits, batch)) < 1e-3

    # eval set = the kept texts, so the scoring-way perplexity is also readable from the shards
    ev = tmp_path / "eval.jsonl"
    ev.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    log = train_text(shards=bos_run["out"], student=f"hf:{bos_run['student']}", eval=str(ev),
                     config=TextTrainConfig(steps=3, batch_size=8, keep_best=False), out=tmp_path / "st")
    assert log["steps"] == 3 and log["n_train"] == len(texts)
    max_length = log["config"]["max_length"]
    want = _scoring_way_perplexity(bos_run["student"], texts, max_length)
    assert log["perplexity_before"] == pytest.approx(want, rel=1e-4)
    # and the same as the student NLLs scoring stored in the shards (mean NLL per predicted token)
    nll = shards.column("student_nll").to_numpy().astype(np.float64)
    n_pred = np.array([len(x) - 1 for x in ids], dtype=np.float64)
    assert log["perplexity_before"] == pytest.approx(math.exp((nll * n_pred).sum() / n_pred.sum()), rel=1e-3)


def test_generate_prompts_are_tokenised_as_scoring_does(bos_run):
    from kdata.models.hf_generate import prompt_ids
    from kdata.scoring.text_batches import tokenize

    model = load_text_model(f"hf:{bos_run['teacher']}", device="cpu", precision="fp32")
    bos = model.tokenizer.bos_token_id
    ids, cut = prompt_ids(model, "the cat sat", max_new_tokens=8)
    assert not cut and ids == tokenize(model, ["the cat sat"])[0] and ids[0] == bos and len(ids) == 12
    # a too-long prompt keeps BOS in front of its last tokens
    long = "x" * 200 + "END"
    ids, cut = prompt_ids(model, long, max_new_tokens=8)
    limit = model.max_length - 8
    assert cut and len(ids) == limit and ids[0] == bos
    assert model.tokenizer.decode(ids[1:]) == long[-(limit - 1):]
