"""The text-classifier trainer against shards written by a real ``kdata select``: a tiny GPT-2 sequence
classifier built in the test scores a JSONL pool at ``--temperature 2`` keeping its top 2 of 3 classes.

The shards' class order must be the student's (refused in one line otherwise), the teacher's distribution
is rebuilt at the shards' scoring temperature (the teacher trained on its own shards sees no distillation
loss), and ``worse_than_before`` compares the last epoch with the start even when the start is kept.
"""

from __future__ import annotations

import json
import shutil

import pyarrow.parquet as pq
import pytest
import torch

pytest.importorskip("transformers")

from kdata.cli import main  # noqa: E402
from kdata.core.errors import KdataError  # noqa: E402
from kdata.training.text import TextTrainConfig, train_text  # noqa: E402
from kdata.training.text_data import TextShards  # noqa: E402
from tests.helpers.text_models import tiny_classifier  # noqa: E402

pytestmark = pytest.mark.usefixtures("warning_lines")  # kdata's warnings read from stderr, as the CLI prints them

WORDS = ("alpha beta", "gamma delta", "the cat sat", "open the file", "sum two numbers", "a dog ran")


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """``abc`` (the teacher: classes a, b, c, a sharpened head so its distributions are far from uniform,
    no dropout so training forward passes equal scoring ones), ``cba`` (the classes reversed), the pool
    and ``sel``: every pool row selected with ``--topk 2 --temperature 2``."""
    from transformers import AutoModelForSequenceClassification

    d = tmp_path_factory.mktemp("textcls")
    tiny_classifier(d / "abc", labels=("a", "b", "c"))
    model = AutoModelForSequenceClassification.from_pretrained(
        str(d / "abc"), resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, summary_first_dropout=0.0)
    with torch.no_grad():
        model.score.weight.mul_(30.0)
    model.save_pretrained(d / "abc")
    tiny_classifier(d / "cba", labels=("c", "b", "a"))
    (d / "pool.jsonl").write_text("".join(
        json.dumps({"sample_id": f"r{i:03d}", "text": f"{WORDS[i % 6]} {i}", "label": "abc"[i % 3]}) + "\n"
        for i in range(48)))
    code = main(["select", "--pool", str(d / "pool.jsonl"), "--teacher", f"hf:{d / 'abc'}", "--student",
                 f"hf:{d / 'abc'}", "--method", "random", "--budget", "1.0", "--topk", "2", "--temperature", "2",
                 "--out", str(d / "sel"), "--quiet", "--device", "cpu"])
    assert code == 0
    meta = TextShards(d / "sel", kind="classifier", batch_size=8)
    assert meta.class_names == ["a", "b", "c"] and meta.temperature == 2.0 and len(meta) == 48
    return d


def test_a_student_whose_classes_are_in_another_order_is_refused_in_one_line(assets, tmp_path, capsys):
    """The stored class indices are the student's logit indices: a student listing the shards' classes
    reversed used to train silently on reversed labels (exit 0). Now: one line, exit 2, nothing saved."""
    sel = assets / "sel"
    for student, order in ((assets / "cba", "3 (c, b, a)"), (tiny_classifier(tmp_path / "np"), "2 (neg, pos)")):
        out = tmp_path / f"out-{student.name}"
        code = main(["train", str(sel), "--student", f"hf:{student}", "--steps", "1", "--eval", "none",
                     "--out", str(out)])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
        assert err.startswith(f"kdata: error: {sel}: shards were labelled with 3 classes (a, b, c) but the "
                              f"student hf:{student} predicts {order}"), err
        assert not out.exists()
    assert main(["train", str(sel), "--student", f"hf:{assets / 'abc'}", "--steps", "1", "--eval", "none",
                 "--out", str(tmp_path / "same"), "--quiet"]) == 0  # the shards' own order trains


def test_the_class_names_come_from_the_manifest_when_the_shards_metadata_lacks_them(assets, tmp_path):
    sel = tmp_path / "sel"
    shutil.copytree(assets / "sel", sel)
    for f in (sel / "data").glob("*.parquet"):
        table = pq.read_table(f)
        pq.write_table(table.replace_schema_metadata({}), f)
    data = TextShards(sel, kind="classifier", batch_size=8)
    assert data.meta == {} and data.class_names == ["a", "b", "c"]
    with pytest.raises(KdataError, match=r"3 classes \(a, b, c\) but the student .* predicts 3 \(c, b, a\)"):
        train_text(shards=sel, student=f"hf:{assets / 'cba'}", eval=None, config=TextTrainConfig(steps=1),
                   out=tmp_path / "o", verify=False)


@pytest.mark.parametrize("logits", [True, False])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_the_teacher_trained_on_its_own_shards_sees_no_distillation_loss(assets, tmp_path, logits, temperature):
    """With top-2 of 3 classes one class is missing, so the teacher's distribution rebuilt at the shards'
    scoring temperature (T_s = 2) is exact at any training temperature: the teacher as its own student
    has KL 0. Rebuilt as if T_s were 1 (the old text trainer), the loss was 0.08 at T = 1, 0.33 at T = 2.
    Without stored logits, T_s · log p stands in for them (as for image shards)."""
    sel = assets / "sel"
    if not logits:
        sel = tmp_path / "sel"
        shutil.copytree(assets / "sel", sel)
        for f in (sel / "data").glob("*.parquet"):
            pq.write_table(pq.read_table(f).drop_columns(["teacher_topk_logit"]), f)
        assert "teacher_topk_logit" not in TextShards(sel, kind="classifier", batch_size=8).columns
    log = train_text(shards=sel, student=f"hf:{assets / 'abc'}", eval=None, verify=logits, out=tmp_path / "o",
                     config=TextTrainConfig(steps=1, batch_size=64, alpha=1.0, temperature=temperature, device="cpu"))
    assert log["score_temperature"] == 2.0 and log["steps"] == 1
    assert abs(log["loss_last_epoch"]) < 1e-4, log["loss_last_epoch"]


def test_worse_than_before_compares_the_last_epoch_even_when_the_start_is_kept(assets, tmp_path, capsys):
    """The eval labels are the teacher's own predictions (accuracy 1 before training); training on the
    web labels alone (α = 0) at a high learning rate moves it away, so keep_best keeps the start. The
    flag used to compare the restored start with itself and never fired; it now compares the last
    epoch, and the warning (stderr) says which weights were saved."""
    shards = pq.read_table(assets / "sel" / "data").to_pylist()
    (tmp_path / "eval.jsonl").write_text("".join(
        json.dumps({"text": r["text"], "label": "abc"[r["teacher_pred"]]}) + "\n" for r in shards))
    out = tmp_path / "student"
    code = main(["train", str(assets / "sel"), "--student", f"hf:{assets / 'abc'}", "--eval",
                 str(tmp_path / "eval.jsonl"), "--epochs", "2", "--alpha", "0", "--lr", "0.05", "--batch-size", "8",
                 "--out", str(out), "--quiet"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    log = json.loads((out / "train_log.json").read_text())
    assert log["accuracy_before"] == 1.0 and log["accuracy_last"] < 1.0
    assert log["kept_epoch"] == 0 and log["accuracy_after"] == log["accuracy_before"]
    assert log["worse_than_before"] is True
    warning = [line for line in captured.err.splitlines() if "warning" in line]
    assert warning == [f"kdata: warning: training made the student worse on {tmp_path / 'eval.jsonl'} (accuracy "
                       f"1.0000 before, {log['accuracy_last']:.4f} after the last epoch); saved the starting "
                       "weights (no epoch did better): accuracy 1.0000"]
    assert "kept the starting weights" in captured.out and "warning" not in captured.out
    # --keep-last: the last epoch's weights are saved, and the flag is the same comparison
    keep_last = train_text(shards=assets / "sel", student=f"hf:{assets / 'abc'}", eval=str(tmp_path / "eval.jsonl"),
                           config=TextTrainConfig(epochs=2, alpha=0.0, lr=0.05, batch_size=8, keep_best=False),
                           out=tmp_path / "last")
    assert keep_last["accuracy_after"] == keep_last["accuracy_last"] == log["accuracy_last"]
    assert keep_last["worse_than_before"] is True and "kept_epoch" not in keep_last


def test_a_text_run_states_no_kd_weight_the_text_trainer_does_not_use(assets):
    """The card said `kdata train` uses α = 0.925 by the kept fraction; the text trainer's α is a fixed 0.5."""
    manifest = json.loads((assets / "sel" / "manifest.json").read_text())
    assert manifest["scoring"]["kind"] == "classifier" and "kd_weight" not in manifest
    assert "KD weight" not in (assets / "sel" / "README.md").read_text()


def test_a_student_that_names_no_classes_trains_in_index_order_as_select_took_it(assets, tmp_path):
    """kdata select accepted a student with transformers' default names (LABEL_0 …); kdata train refused it."""
    unnamed = tiny_classifier(tmp_path / "unnamed", labels=("LABEL_0", "LABEL_1", "LABEL_2"))
    assert main(["train", str(assets / "sel"), "--student", f"hf:{unnamed}", "--steps", "1", "--eval", "none",
                 "--out", str(tmp_path / "o"), "--quiet"]) == 0
    two = tiny_classifier(tmp_path / "two", labels=("LABEL_0", "LABEL_1"))  # another class count: refused
    with pytest.raises(KdataError, match=r"3 classes \(a, b, c\) but the student .* predicts 2"):
        train_text(shards=assets / "sel", student=f"hf:{two}", eval=None, config=TextTrainConfig(steps=1),
                   out=tmp_path / "o2", verify=False)


def test_eval_rows_with_labels_the_student_lacks_are_said_and_counted(assets, tmp_path, capsys):
    """They were dropped in silence after a note saying "evaluating on" the larger count (a case slip drops a class)."""
    ev = tmp_path / "eval.jsonl"
    rows = [{"text": f"{WORDS[i % 6]} {i}", "label": "abc"[i % 3]} for i in range(9)]
    rows += [{"text": "the cat 1", "label": "A"}, {"text": "the cat 2", "label": "A"}, {"text": "the cat 3"}]
    ev.write_text("".join(json.dumps(r) + "\n" for r in rows))
    log = train_text(shards=assets / "sel", student=f"hf:{assets / 'abc'}", eval=str(ev),
                     config=TextTrainConfig(steps=1), out=tmp_path / "o", verify=False)
    err = capsys.readouterr().err
    assert log["n_eval"] == 9 and log["n_eval_not_measured"] == 3
    assert (f"kdata: note: {ev}: 3 evaluation row(s) not measured, their label is not among the student's classes "
            "(A ×2, (no label) ×1); accuracy on 9") in err


def test_the_image_library_trainer_refuses_text_shards_in_one_line(assets, tmp_path):
    """train_student on text shards failed with 'evaluation set has no images' or an AttributeError."""
    from kdata.pipeline.distill import train_student
    from kdata.training.config import TrainConfig

    with pytest.raises(KdataError, match=r"classifier text shards train with kdata\.training\.text\.train_text"):
        train_student(shards=assets / "sel", student=f"hf:{assets / 'abc'}", eval=None, config=TrainConfig(steps=1),
                      out=str(tmp_path / "o"))
