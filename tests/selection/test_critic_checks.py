"""A fitted critic is used with what it was fitted on (``kdata.selection.critic_checks``): ``critic fit``
records the teacher's and student's checksums; ``critic apply`` and ``select --method critic`` refuse other
models (also the same path with weights replaced in place), a critic written before the checksums were
recorded works with one note; a critic refitted in place is a different ``select`` run, never "already
complete"; the labels CSV refuses conflicting repeats, counts agreeing ones once, and reads a BOM.
Real tiny transformers LMs, the built-in digits models, real pools and Parquet."""

from __future__ import annotations

import csv
import json
import shutil

import pytest

from kdata.cli import main
from kdata.core.errors import KdataError
from kdata.core.warn import shown_as_lines
from kdata.selection.critic_model import load_critic, read_labels

pytest.importorskip("transformers")

from tests.helpers.text_models import text_assets, tiny_lm  # noqa: E402


def _labels(path, ids, accept) -> str:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["sample_id", "accept"])
        w.writerows([i, int(a)] for i, a in zip(ids, accept))
    return str(path)


@pytest.fixture(scope="module")
def text_critic(tmp_path_factory):
    """(assets, tmp, critic dir, student dir): a text critic fitted with a student that lives in tmp, so a
    test can replace its weights in place."""
    d, tmp = text_assets(), tmp_path_factory.mktemp("critic-checks")
    shutil.copytree(d / "s", tmp / "s")
    labels = _labels(tmp / "labels.csv", [f"t{i:03d}" for i in range(60)], [i % 3 != 0 for i in range(60)])
    crit = tmp / "critic"
    assert main(["critic", "fit", "--scores-from", str(d / "pool.jsonl"), "--teacher", f"hf:{d / 't'}",
                 "--student", f"hf:{tmp / 's'}", "--labels", labels, "--device", "cpu", "--out", str(crit),
                 "--json"]) == 0
    return d, tmp, crit


def _apply(crit, d, out, *extra):
    return main(["critic", "apply", str(crit), "--scores-from", str(d / "pool.jsonl"), "--out", str(out),
                 "--device", "cpu", "--json", *extra])


def test_fit_records_the_checksums_of_the_models_it_was_fitted_with(text_critic):
    from kdata.models.hf import load_text_model

    d, tmp, crit = text_critic
    text = json.loads((crit / "critic.json").read_text())["text"]
    assert text["teacher"] == f"hf:{d / 't'}" and text["student"] == f"hf:{tmp / 's'}"
    assert text["teacher_checksum"] == load_text_model(text["teacher"]).checksum
    assert text["student_checksum"] == load_text_model(text["student"]).checksum


def test_apply_and_select_refuse_another_student(text_critic, tmp_path, capsys):
    d, tmp, crit = text_critic
    capsys.readouterr()
    assert _apply(crit, d, tmp_path / "ok.parquet") == 0  # the recorded models: accepted, no note
    assert "note" not in capsys.readouterr().err
    other = ["--teacher", f"hf:{d / 't'}", "--student", f"hf:{d / 'r'}"]
    assert _apply(crit, d, tmp_path / "a.parquet", *other) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"kdata: error: {crit}: the critic was fitted on the statistics "
                                                   f"of student hf:{tmp / 's'}")
    assert not (tmp_path / "a.parquet").exists()
    rc = main(["select", "--pool", str(d / "pool.jsonl"), *other, "--method", "critic,random", "--critic", str(crit),
               "--budget", "1.0", "--out", str(tmp_path / "sel"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and f"kdata: error: {crit}: the critic was fitted on the statistics of student" in err
    assert err.count("kdata: error") == 1 and not (tmp_path / "sel").exists()


def test_a_student_replaced_in_place_is_refused_and_an_old_critic_gets_a_note(text_critic, tmp_path, capsys):
    d, tmp, crit = text_critic
    stu = tmp_path / "s"
    shutil.copytree(tmp / "s", stu)
    moved = tmp_path / "critic"
    shutil.copytree(crit, moved)  # the same critic, pointing at this test's copy of the student
    meta = json.loads((moved / "critic.json").read_text())
    meta["text"]["student"] = f"hf:{stu}"
    (moved / "critic.json").write_text(json.dumps(meta))
    args = ["--teacher", f"hf:{d / 't'}", "--student", f"hf:{stu}"]
    assert _apply(moved, d, tmp_path / "a.parquet", *args) == 0
    tiny_lm(stu, seed=5, n_embd=16)  # other weights, same path (so the same spec)
    capsys.readouterr()
    assert _apply(moved, d, tmp_path / "b.parquet", *args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"but the student in use, hf:{stu}, is sha256:" in err
    # a critic written before the checksums were recorded: it still applies, with one note
    for k in ("teacher_checksum", "student_checksum"):
        meta["text"].pop(k)
    (moved / "critic.json").write_text(json.dumps(meta))
    assert _apply(moved, d, tmp_path / "c.parquet", *args) == 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"kdata: note: {moved}: the critic records no model checksums")


@pytest.fixture(scope="module")
def digit_labels(tmp_path_factory):
    """Two opposite label sets over 200 builtin:digits-web ids (accept = the web label is 0–4)."""
    from kdata.pools.spec import open_pool

    t = open_pool("builtin:digits-web").read_all()
    ids, lab = t.column("sample_id").to_pylist()[:200], t.column("label").to_pylist()[:200]
    tmp = tmp_path_factory.mktemp("digit-labels")
    low = [x in ("0", "1", "2", "3", "4") for x in lab]
    return (_labels(tmp / "a.csv", ids, low), _labels(tmp / "b.csv", ids, [not x for x in low]))


def _fit_image(labels, out, *extra) -> None:
    assert main(["critic", "fit", "--scores-from", "builtin:digits-web", "--labels", labels, "--out", str(out),
                 "--device", "cpu", "--json", *extra]) == 0


def test_image_critic_records_its_models_and_apply_refuses_others(digit_labels, builtin_models, tmp_path, capsys):
    teacher, student = builtin_models
    crit = tmp_path / "critic"
    _fit_image(digit_labels[0], crit)
    assert load_critic(crit).models == {"teacher": teacher.spec, "teacher_checksum": teacher.checksum,
                                        "student": student.spec, "student_checksum": student.checksum}
    capsys.readouterr()
    rc = main(["critic", "apply", str(crit), "--scores-from", "builtin:digits-web", "--student",
               "builtin:digits-teacher", "--out", str(tmp_path / "a.parquet"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "fitted on the statistics of student builtin:digits-student" in err


def test_select_rerun_after_refitting_the_critic_in_place_is_another_run(digit_labels, builtin_models, tmp_path,
                                                                         capsys):
    from kdata.core.jsonable import config_hash
    from kdata.pipeline.config import SelectConfig

    crit, out = tmp_path / "critic", tmp_path / "sel"
    _fit_image(digit_labels[0], crit)
    args = ["select", "--pool", "builtin:digits-web", "--method", "critic,kd3", "--critic", str(crit),
            "--budget", "1.0", "--out", str(out), "--device", "cpu", "--json"]
    assert main(args) == 0
    capsys.readouterr()
    assert main(args) == 0 and json.loads(capsys.readouterr().out)["status"] == "already complete"
    before = SelectConfig(method="critic,kd3", critic=str(crit)).hash()
    _fit_image(digit_labels[1], crit, "--overwrite")  # refitted in place on the opposite labels
    assert SelectConfig(method="critic,kd3", critic=str(crit)).hash() != before
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already holds a different run" in err
    # runs without a critic hash as they always did
    cfg = SelectConfig(method="kd3")
    assert cfg.hash() == config_hash(cfg.to_dict())


def test_labels_conflicting_repeat_is_one_line_naming_both_lines(tmp_path):
    p = tmp_path / "l.csv"
    p.write_text("sample_id,accept\na,1\nb,0\nc,1\nb,1\n")
    with pytest.raises(KdataError, match=r"^.*l\.csv: lines 3 and 5 both label 'b', as reject and accept; keep one"):
        read_labels(p)


def test_labels_agreeing_repeats_count_once_with_one_warning(tmp_path, capsys):
    p = tmp_path / "l.csv"
    p.write_text("sample_id,accept\na,1\nb,0\na,yes\nb,no\nc,1\n")
    with shown_as_lines():  # as the kdata command shows kdata's warnings
        assert read_labels(p) == {"a": True, "b": False, "c": True}
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "2 row(s) repeat a sample id with the same label (e.g. 'a' on lines 2 and 4)" in err


def test_labels_with_a_utf8_bom_and_not_utf8(tmp_path):
    p = tmp_path / "bom.csv"
    p.write_text("sample_id,accept\na,1\nb,0\n", encoding="utf-8-sig")  # as a spreadsheet saves it
    assert read_labels(p) == {"a": True, "b": False}
    p.write_bytes(b"sample_id,accept\n\xff\xfe,1\n")
    with pytest.raises(KdataError, match=r"bom\.csv: not UTF-8 text"):
        read_labels(p)


@pytest.mark.parametrize("source", ["text", "image"])
def test_labels_from_another_pool_are_named_before_the_split_or_any_model(source, tmp_path, capsys):
    """Two labelled ids the pool does not hold: the real mistake (ids from another file), not a --val-frac split
    of 2 rows; the ids present decide the split check, and no model is loaded."""
    labels = _labels(tmp_path / "l.csv", ["zz", "yy"], [1, 0])
    if source == "text":
        d = text_assets()
        argv = ["--scores-from", str(d / "pool.jsonl"), "--teacher", f"hf:{d / 't'}", "--student", f"hf:{d / 's'}"]
    else:
        argv = ["--scores-from", "builtin:digits-web", "--teacher", "builtin:digits-teacher",
                "--student", "builtin:digits-student"]
    capsys.readouterr()
    assert main(["critic", "fit", *argv, "--labels", labels, "--device", "cpu", "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"kdata: error: {labels}: none of the labelled sample ids are in {argv[1]}"]
    assert not (tmp_path / "c").exists()
