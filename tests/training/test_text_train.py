"""The text trainer on curated text shards written from a real teacher (tests/helpers/text_shards.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kdata.core.errors import KdataError
from kdata.models.builtin_text import model_dir
from kdata.training.text import TextTrainConfig, train_text
from kdata.training.text_data import TextShards, shard_kind
from kdata.training.text_losses import bucket_kl
from tests.helpers.text_models import tiny_classifier, tiny_lm
from tests.helpers.text_shards import clean_lm_shards, write_classifier_shards


@pytest.fixture(scope="module")
def lm_shards(tmp_path_factory):
    return clean_lm_shards(tmp_path_factory.mktemp("lm") / "curated", 240)


def test_teacher_matches_its_own_stored_soft_labels(lm_shards):
    from transformers import AutoModelForCausalLM

    data = TextShards(lm_shards, kind="causal_lm", batch_size=8, pad_id=0)
    batch = next(data.batches(epoch=0))
    assert shard_kind(lm_shards) == "causal_lm"
    assert batch["topk_ids"].shape[:2] == (8, batch["input_ids"].shape[1] - 1)
    kls = {}
    for name in ("text-teacher", "text-student"):
        model = AutoModelForCausalLM.from_pretrained(str(model_dir(name))).eval()
        with torch.inference_mode():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        kls[name] = float(bucket_kl(logits, batch))
    assert kls["text-teacher"] < 1e-3 < kls["text-student"]  # float16 storage: not exactly 0


def test_distillation_lowers_held_out_perplexity_and_saves_a_loadable_student(lm_shards, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "student"
    log = train_text(shards=lm_shards, student="builtin:text-student", eval="builtin:text-test",
                     config=TextTrainConfig(epochs=6, batch_size=16), out=out)
    assert log["kind"] == "causal_lm" and log["n_train"] == 240 and log["steps"] == 90
    assert log["perplexity_after"] < 0.8 * log["perplexity_before"]
    assert not log["worse_than_before"]
    model = AutoModelForCausalLM.from_pretrained(str(out))
    assert (out / "model.safetensors").exists() and (out / "tokenizer.json").exists()
    written = json.loads((out / "train_log.json").read_text())
    assert written["perplexity_after"] == log["perplexity_after"]
    assert written["files"] == log["files"] and Path(written["files"]["model"]).is_file()
    assert model.config.n_layer == 1
    # --steps: exactly that many optimiser steps, whatever the data size
    log2 = train_text(shards=lm_shards, student="builtin:text-student", eval=None,
                      config=TextTrainConfig(steps=7, batch_size=16), out=tmp_path / "s2")
    assert log2["steps"] == 7 and log2["perplexity_before"] is None


def test_keep_best_ends_with_the_best_epoch_and_saves_it(lm_shards, tmp_path):
    """With an eval set and keep_best (the CLI's default), the saved student is the best of the start and
    every epoch — a too-high learning rate that ruins the student leaves it as it was."""
    from kdata.models.hf import load_text_model
    from kdata.training.text_data import eval_texts
    from kdata.models.text_tokens import encode_texts
    from kdata.training.text_losses import perplexity

    log = train_text(shards=lm_shards, student="builtin:text-student", eval="builtin:text-test",
                     config=TextTrainConfig(epochs=2, batch_size=16, lr=0.5, keep_best=True), out=tmp_path / "b")
    assert [e["epoch"] for e in log["per_epoch"]] == [1, 2]
    best = min([log["perplexity_before"]] + [e["metric"] for e in log["per_epoch"]])
    assert log["perplexity_after"] == best and log["perplexity_last"] == log["per_epoch"][-1]["metric"]
    assert log["kept_epoch"] == 0 and log["perplexity_after"] == log["perplexity_before"]  # lr 0.5 ruins it
    # the flag compares the last epoch with the start, whichever weights were kept
    assert log["worse_than_before"] == (log["perplexity_last"] > log["perplexity_before"])
    # the directory holds the kept weights: measured again from disk, the same perplexity
    saved = load_text_model(f"hf:{tmp_path / 'b'}", device="cpu", precision="fp32")
    seqs = encode_texts(saved.tokenizer, eval_texts("builtin:text-test")[0], max_length=saved.max_length)
    assert perplexity(saved.model, seqs, pad_id=saved.pad_id) == pytest.approx(log["perplexity_after"], rel=1e-4)


def test_a_student_with_another_tokenizer_is_refused(lm_shards, tmp_path):
    other = tiny_lm(tmp_path / "bytes-lm")
    with pytest.raises(KdataError, match="tokeni"):
        train_text(shards=lm_shards, student=f"hf:{other}", eval=None, config=TextTrainConfig(steps=1),
                   out=tmp_path / "o")


def test_classifier_student_learns_from_stored_class_soft_labels(tmp_path):
    words = {"pos": ["good", "great", "fine", "nice"], "neg": ["bad", "awful", "poor", "sad"]}
    gen = torch.Generator().manual_seed(0)
    texts, labels, probs = [], [], []
    for i in range(96):
        cls = i % 2
        name = ("neg", "pos")[cls]
        picks = torch.randint(0, 4, (3,), generator=gen).tolist()
        texts.append(" ".join(words[name][j] for j in picks))
        labels.append(cls if i % 10 else 1 - cls)  # some wrong web labels: the teacher's soft labels are right
        probs.append([0.9, 0.1] if cls == 0 else [0.1, 0.9])
    shards = write_classifier_shards(tmp_path / "cls", texts, labels, probs)
    (tmp_path / "eval.jsonl").write_text("".join(
        json.dumps({"text": " ".join(words[n][j] for j in (k % 4, (k + 1) % 4)), "label": n}) + "\n"
        for k in range(20) for n in ("neg", "pos")))
    student = tiny_classifier(tmp_path / "clf", labels=("neg", "pos"))
    assert shard_kind(shards) == "classifier"
    log = train_text(shards=shards, student=f"hf:{student}", eval=str(tmp_path / "eval.jsonl"),
                     config=TextTrainConfig(epochs=15, batch_size=16, lr=3e-3, alpha=0.9), out=tmp_path / "out")
    assert log["kind"] == "classifier" and log["n_eval"] == 40
    assert log["accuracy_after"] >= 0.9 > log["accuracy_before"] - 0.05
    from transformers import AutoModelForSequenceClassification

    assert AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "out")).config.num_labels == 2


def test_image_shards_and_a_wrong_student_kind_are_one_line(lm_shards, tmp_path):
    student = tiny_classifier(tmp_path / "clf")
    with pytest.raises(KdataError, match="causal lm soft labels"):
        train_text(shards=lm_shards, student=f"hf:{student}", eval=None, config=TextTrainConfig(steps=1),
                   out=tmp_path / "o")


def test_kdata_train_takes_the_text_branch_for_text_shards(lm_shards, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "cli-student"
    proc = subprocess.run([sys.executable, "-m", "kdata.cli", "train", str(lm_shards), "--steps", "3", "--eval", "none",
                           "--out", str(out), "--json"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    log = json.loads(proc.stdout)
    assert log["student"] == "builtin:text-student" and log["kind"] == "causal_lm" and log["steps"] == 3
    assert (out / "model.safetensors").exists()
    bad = subprocess.run([sys.executable, "-m", "kdata.cli", "train", str(lm_shards), "--reselect-every", "2"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "--reselect-every" in bad.stderr and "Traceback" not in bad.stderr


def test_shard_kind_reads_what_the_shards_hold(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    def write(name, image, text):
        d = tmp_path / name / "data"
        d.mkdir(parents=True)
        pq.write_table(pa.table({"sample_id": ["a", "b"], "image": pa.array(image, pa.binary()),
                                 "text": pa.array(text, pa.string())}), d / "train-00000-of-00001.parquet")
        return tmp_path / name

    assert shard_kind(write("img", [b"\x89PNG", b"\x89PNG"], [None, None])) == "image"
    assert shard_kind(write("txt", [None, None], ["good", "bad"])) == "classifier"  # kdata's text shards


def test_a_text_student_is_never_saved_inside_the_dataset(lm_shards, capsys):
    from kdata.cli import main

    code = main(["train", str(lm_shards), "--steps", "1", "--eval", "none", "--out", str(lm_shards / "student")])
    err = capsys.readouterr().err
    assert code == 2 and "inside the curated dataset" in err and err.count("\n") == 1
    assert not (lm_shards / "student").exists()


def test_temperature_is_refused_for_causal_lm_shards(lm_shards, tmp_path, capsys):
    """Causal-LM shards hold token log-probs at T = 1 and the LM loss never reads --temperature: one line."""
    from kdata.cli import main

    code = main(["train", str(lm_shards), "--steps", "1", "--eval", "none", "--temperature", "2",
                 "--out", str(tmp_path / "t2")])
    err = capsys.readouterr().err
    assert code == 2 and "--temperature 2" in err and err.count("\n") == 1 and not (tmp_path / "t2").exists()
    assert main(["train", str(lm_shards), "--steps", "1", "--eval", "none", "--temperature", "1", "--quiet",
                 "--out", str(tmp_path / "t1")]) == 0  # the value the shards hold is fine


def test_train_help_gives_both_learning_rate_defaults(capsys):
    from kdata.cli import main
    from kdata.training.config import BUILTIN_TEXT_LR, PRETRAINED_TEXT_LR, TrainConfig

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert (f"(default: {TrainConfig().lr}; text students: {BUILTIN_TEXT_LR:g} for the built-in text student, "
            f"{PRETRAINED_TEXT_LR:g} for a pre-trained one of your own)") in out


def test_the_text_learning_rate_follows_the_student_and_is_recorded(lm_shards, tmp_path):
    """1e-2 made pre-trained students worse than they started (benchmarks/text_lr.py); a given --lr wins."""
    from kdata.training.config import BUILTIN_TEXT_LR, GIVEN_LR, PRETRAINED_TEXT_LR, text_lr

    assert text_lr(None, "builtin:text-student")[0] == BUILTIN_TEXT_LR
    assert text_lr(None, "hf:models/mine") == (PRETRAINED_TEXT_LR, f"default for a pre-trained student "
                                                                   f"({PRETRAINED_TEXT_LR:g}; --lr to change it)")
    assert text_lr(3e-3, "builtin:text-student") == (3e-3, GIVEN_LR)
    log = train_text(shards=lm_shards, student=f"hf:{model_dir('builtin:text-student')}", eval=None,
                     config=TextTrainConfig(steps=1), out=tmp_path / "s")
    assert log["config"]["lr"] == log["lr"]["value"] == PRETRAINED_TEXT_LR
    assert json.loads((tmp_path / "s" / "train_log.json").read_text())["lr"]["reason"].startswith("default for a pre")


def test_text_training_is_seeded_by_its_config_and_leaves_the_callers_rng_alone(lm_shards, tmp_path):
    """The text trainer used to call torch.manual_seed: a library caller's random stream moved. The run is
    still seeded by its config (same seed, same weights) and the caller's stream is where it was."""
    import hashlib

    def run(out, caller_seed):
        torch.manual_seed(caller_seed)
        train_text(shards=lm_shards, student="builtin:text-student", eval=None,
                   config=TextTrainConfig(steps=2, seed=5, device="cpu"), out=tmp_path / out)
        return torch.rand(3), hashlib.sha256((tmp_path / out / "model.safetensors").read_bytes()).hexdigest()

    after_a, weights_a = run("a", 0)
    after_b, weights_b = run("b", 123)
    torch.manual_seed(0)
    assert torch.equal(after_a, torch.rand(3)) and weights_a == weights_b


def test_a_test_set_measures_the_saved_lm_on_texts_that_chose_nothing(lm_shards, tmp_path):
    from kdata.models.hf import load_text_model
    from kdata.training.text_data import eval_texts
    from kdata.models.text_tokens import encode_texts
    from kdata.training.text_losses import perplexity

    test = tmp_path / "test.jsonl"
    test.write_text("".join(json.dumps({"text": t}) + "\n" for t in eval_texts("builtin:text-test")[0][:40]))
    log = train_text(shards=lm_shards, student="builtin:text-student", eval="builtin:text-test", test=str(test),
                     config=TextTrainConfig(epochs=1, keep_best=True), out=tmp_path / "s")
    saved = load_text_model(f"hf:{tmp_path / 's'}", device=torch.device("cpu"), precision="fp32")
    texts = [json.loads(line)["text"] for line in test.read_text().splitlines()]
    want = perplexity(saved.model, encode_texts(saved.tokenizer, texts, max_length=min(saved.max_length, 256)),
                      pad_id=saved.pad_id)
    assert log["test"]["spec"] == str(test) and log["test"]["n"] == 40
    assert log["test"]["perplexity"] == pytest.approx(want, rel=1e-5)
    assert json.loads((tmp_path / "s" / "train_log.json").read_text())["test"] == log["test"]
