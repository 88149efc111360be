"""The trainer's plumbing around the maths: epochs and workers, KD³ re-selection, damaged shards, logs.

Real runs on selections written by the real pipeline from the built-in pool, real Parquet shards
damaged with pyarrow, the built-in student trained for an epoch or two.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from kdata.cli import main
from kdata.core.errors import KdataError
from kdata.models.spec import load_model
from kdata.training.budget import resolve_alpha
from kdata.training.evaluate import EvalSet
from kdata.training.train import TrainConfig, train

RESELECT = ["--pool", "builtin:digits-web", "--teacher", "builtin:digits-teacher"]


def _cli(capsys, *args):
    capsys.readouterr()
    code = main([str(a) for a in args])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kdata: error: "), err
    return lines[0]


@pytest.fixture(scope="module")
def groups_run(tmp_path_factory, builtin_models):
    """A random 437 rows of the built-in pool in row groups of 100 (5 row groups), by the real pipeline."""
    from kdata.pipeline.config import RunOptions, SelectConfig
    from kdata.pipeline.run import run_select

    out = tmp_path_factory.mktemp("groups") / "rg"
    run_select(SelectConfig(method="random", budget="437", row_group_rows=100), out=str(out),
               opts=RunOptions(device="cpu"))
    assert pq.ParquetFile(next((out / "data").glob("*.parquet"))).metadata.num_row_groups == 5
    return out


# ------------------------------------------------------------------------------------------------
# F1: epochs and workers


@pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")  # 3 workers on a 2-core machine
def test_every_epoch_sees_every_row_and_workers_do_not_change_the_student(groups_run):
    """Each DataLoader worker used to emit its own partial last batch, and the step cap cut the last
    epoch short (329 of 437 rows with 2 workers); batches also changed with the worker count. Now every
    epoch is ceil(437 / 64) = 7 batches of one seeded order, and the same seed gives the same student."""
    weights, logs = {}, {}
    for workers in (0, 2, 3):
        student = load_model("builtin:digits-student", device="cpu")
        logs[workers] = train(student, groups_run, config=TrainConfig(epochs=2, device="cpu", workers=workers,
                                                                      eval_every_epoch=False))
        weights[workers] = {k: v.clone() for k, v in student.module.state_dict().items()}
    for workers, log in logs.items():
        assert [(h["rows"], h["steps"]) for h in log["history"]] == [(437, 7), (437, 7)], workers
        assert [h["loss"] for h in log["history"]] == [h["loss"] for h in logs[0]["history"]]
    for workers in (2, 3):
        for k in weights[0]:
            assert torch.equal(weights[0][k], weights[workers][k]), (workers, k)
    assert all(log["steps"] == log["protocol"]["steps_planned"] == 14 for log in logs.values())


def test_steps_stay_exact_with_workers(groups_run):
    log = train(load_model("builtin:digits-student", device="cpu"), groups_run,
                config=TrainConfig(steps=10, device="cpu", workers=2, eval_every_epoch=False))
    assert log["steps"] == 10 and [h["steps"] for h in log["history"]] == [7, 3]
    assert [h["rows"] for h in log["history"]] == [437, 192]


# ------------------------------------------------------------------------------------------------
# F4 / F5 / F6: KD³ re-selection


def test_schedule_replans_without_a_jump_and_ends_at_zero():
    from kdata.training.budget import Schedule

    s = Schedule(42)
    first = [s.factor(i) for i in range(14)]
    s.replan(14, 8)  # the set shrank: 8 more steps instead of 28
    assert s.total == 22
    assert first == [Schedule(42).factor(i) for i in range(14)]  # the steps before are untouched
    assert s.factor(14) == pytest.approx(Schedule(42).factor(14), rel=1e-9)  # no jump
    assert s.factor(21) < 0.05 * s.factor(14) and s.factor(22) == pytest.approx(0.0, abs=1e-12)
    same = Schedule(42)
    same.replan(14, 28)  # as planned: nothing changes
    assert [same.factor(i) for i in range(42)] == [Schedule(42).factor(i) for i in range(42)]


def test_reselection_keeps_the_budget_and_completes_the_schedule(demo_run, tmp_path, capsys):
    """The budget of each re-selection was the previous re-selection's size, so the kept set could only
    shrink; and the LR schedule, planned for the original size, stopped half-way. Now each re-selection
    is given the original size and the remaining steps are re-planned from the new set."""
    out = tmp_path / "o"
    code, so, se = _cli(capsys, "train", demo_run, "--epochs", 3, "--reselect-every", 1, "--reselect-threshold",
                        0.9, *RESELECT, "--eval", "none", "--json", "--device", "cpu", "--out", out)
    assert code == 0, se
    log = json.loads(so)
    budgets = [json.loads((out / "reselect" / f"reselect-epoch{e:03d}" / "manifest.json").read_text())["budget_rows"]
               for e in (1, 2)]
    assert budgets == [437, 437] and [r["budget"] for r in log["reselections"]] == [437, 437]
    sizes = [437] + [r["rows"] for r in log["reselections"]]
    assert sizes[1] < 437 and [h["rows"] for h in log["history"]] == sizes
    want = sum(math.ceil(n / 64) for n in sizes)
    assert log["steps"] == log["protocol"]["steps_planned"] == want
    assert log["n_train"] == 437 and log["n_train_last"] == sizes[-1]
    assert log["alpha"]["value"] == resolve_alpha(None, demo_run)["value"]  # the original set's α throughout


def test_a_reselection_that_keeps_nothing_is_one_line_naming_the_threshold(demo_run, tmp_path, capsys):
    code, so, se = _cli(capsys, "train", demo_run, "--epochs", 2, "--reselect-every", 1, "--reselect-threshold",
                        1.0, *RESELECT, "--eval", "none", "--device", "cpu", "--out", tmp_path / "o", "--quiet")
    line = _one_line(se)
    assert code == 2 and "kept no row" in line and "--reselect-threshold 1.0" in line and "--budget" not in line
    assert not (tmp_path / "o" / "student.pt2").exists()


# ------------------------------------------------------------------------------------------------
# F7 / F8 / F9: damaged or third-party shards


def _bare(demo_run, path, edit=None, *, meta_edit=None):
    """The demo's shard, edited, alone in ``path`` (no manifest: third-party shards)."""
    src = next((demo_run / "data").glob("*.parquet"))
    t = pq.read_table(src)
    if edit:
        t = edit(t)
    if meta_edit:
        md = dict(t.schema.metadata)
        md[b"kdata"] = json.dumps(meta_edit(json.loads(md[b"kdata"]))).encode()
        t = t.replace_schema_metadata(md)
    path.mkdir(parents=True)
    pq.write_table(t, path / "shard.parquet")
    return path


def _set(t, name, values):
    i = t.schema.get_field_index(name)
    return t.set_column(i, t.schema.field(i), pa.array(values, t.schema.field(i).type))


def _rows(t, name, row, value):
    vals = t.column(name).to_pylist()
    vals[row] = value(vals[row])
    return _set(t, name, vals)


BAD_LABELS = {
    "nan_prob": ("teacher_topk_prob", lambda r: [float("nan")] * len(r), "non-finite probabilities"),
    "inf_logit": ("teacher_topk_logit", lambda r: [float("inf")] + r[1:], "non-finite logits"),
    "prob_gt1": ("teacher_topk_prob", lambda r: [0.9, 0.6] + r[2:], "sum to more than 1"),
    "negative_prob": ("teacher_topk_prob", lambda r: [-0.1] + r[1:], "outside [0, 1]"),
    "idx_oob": ("teacher_topk_idx", lambda r: [12] + r[1:], "class indices outside [0, 10)"),
    "label_oob": ("label_idx", lambda r: 10, "labels outside [-1, 10)"),
}


@pytest.mark.parametrize("case", list(BAD_LABELS))
def test_bad_soft_labels_are_one_line_naming_file_and_column(demo_run, tmp_path, capsys, case):
    """NaN probabilities read as "training diverged; lower --lr", an index out of range as an internal
    RuntimeError (exit 1), and probabilities summing to 2 trained silently. Each is now refused as the
    row group is read: one line naming the file, the column and the row, exit 2."""
    col, edit, problem = BAD_LABELS[case]
    bare = _bare(demo_run, tmp_path / case, lambda t: _rows(t, col, 7, edit))
    code, _, se = _cli(capsys, "train", bare, "--epochs", 1, "--eval", "none", "--device", "cpu",
                       "--out", tmp_path / "o", "--quiet")
    line = _one_line(se)
    assert code == 2 and line.startswith(f"kdata: error: {bare / 'shard.parquet'}: column '{col}'"), line
    assert problem in line and "row 7" in line and "--lr" not in line
    assert not (tmp_path / "o" / "student.pt2").exists()


def test_a_non_finite_student_is_named_without_the_lr_advice(demo_run):
    student = load_model("builtin:digits-student", device="cpu")
    with torch.no_grad():
        next(iter(student.module.parameters())).fill_(float("nan"))
    with pytest.raises(KdataError, match="non-finite loss") as e:
        train(student, demo_run, config=TrainConfig(epochs=1, device="cpu"))
    assert "before any update" in str(e.value) and "lower --lr" not in str(e.value)


def test_undecodable_images_are_counted_and_a_set_of_them_is_refused(demo_run, tmp_path, capsys):
    """Undecodable rows were skipped without a word (in the worker processes' own counters), and a set
    of nothing but them "trained" 0 steps, exit 0. Now the main process counts them: a few are a note
    in the log and the summary; more than 10% of an epoch is one line, exit 2."""
    bad = {3, 50, 200}
    few = _bare(demo_run, tmp_path / "few",
                lambda t: _set(t, "image", [b"not an image" if i in bad else v
                                            for i, v in enumerate(t.column("image").to_pylist())]))
    for workers in (0, 2):
        log = train(load_model("builtin:digits-student", device="cpu"), few,
                    config=TrainConfig(epochs=1, device="cpu", workers=workers))
        assert log["n_undecodable"] == 3 and log["history"][0]["rows"] == 434 and log["steps"] == 7
        assert any("3 rows left out of training" in n and "row 3" in n for n in log["notes"])
    code, so, se = _cli(capsys, "train", few, "--epochs", 1, "--eval", "none", "--device", "cpu", "--out",
                        tmp_path / "o1", "--quiet")
    assert code == 0 and "note: 3 rows left out of training" in so, se
    every = _bare(demo_run, tmp_path / "all", lambda t: _set(t, "image", [b"not an image"] * t.num_rows))
    code, _, se = _cli(capsys, "train", every, "--epochs", 1, "--eval", "none", "--device", "cpu",
                       "--out", tmp_path / "o2", "--quiet")
    line = _one_line(se)
    assert code == 2 and line.startswith(f"kdata: error: {every / 'shard.parquet'}: 437 of the 437 rows")
    assert "cannot be decoded" in line and not (tmp_path / "o2" / "student.pt2").exists()


def _reversed(t):
    """Class indices reversed (9 - i) in label_idx and teacher_topk_idx; the label strings unchanged."""
    t = _set(t, "label_idx", [None if v is None or v < 0 else 9 - v for v in t.column("label_idx").to_pylist()])
    return _set(t, "teacher_topk_idx", [[9 - i for i in r] for r in t.column("teacher_topk_idx").to_pylist()])


def _no_names(meta):
    return {k: v for k, v in meta.items() if k != "class_names"}


def test_shards_without_class_names_are_checked_by_their_labels(demo_run, tmp_path, capsys):
    """Shards that name no classes were trained in the student's order unchecked (reversed classes:
    accuracy 0.83 → 0.23, exit 0). Their label strings are now checked against the student's class
    names at label_idx; a mismatch is one line, and shards without labels train with a note."""
    rev = _bare(demo_run, tmp_path / "rev", _reversed, meta_edit=_no_names)
    code, _, se = _cli(capsys, "train", rev, "--epochs", 1, "--eval", "none", "--device", "cpu",
                       "--out", tmp_path / "o", "--quiet")
    line = _one_line(se)
    assert code == 2 and line.startswith(f"kdata: error: {rev / 'shard.parquet'}: the shards name no classes")
    assert "disagree with the class order" in line
    same = _bare(demo_run, tmp_path / "same", meta_edit=_no_names)
    log = train(load_model("builtin:digits-student", device="cpu"), same, config=TrainConfig(steps=1, device="cpu"))
    assert log["notes"] == []  # checked, and in order
    unlabelled = _bare(demo_run, tmp_path / "unlabelled", lambda t: _set(t, "label", [None] * t.num_rows),
                       meta_edit=_no_names)
    log = train(load_model("builtin:digits-student", device="cpu"), unlabelled,
                config=TrainConfig(steps=1, device="cpu"))
    assert any("is assumed" in n for n in log["notes"])


# ------------------------------------------------------------------------------------------------
# F12: α of derived datasets; F13: log and output nits


def test_alpha_of_a_derived_dataset_follows_its_source_to_the_pool(demo_run, tmp_path, capsys):
    """A dedup restarts the counts (kept 406 of 437: fraction 0.93, α 0.9) although its rows are 28% of
    the pool the dataset it came from was selected from (α 0.93). The fraction now follows the sources."""
    from kdata.training.budget import alpha_for_fraction

    dd, dd2 = tmp_path / "dd", tmp_path / "dd2"
    assert main(["dedup", str(demo_run), "--level", "exact", "--out", str(dd), "--json"]) == 0
    assert main(["dedup", str(dd), "--level", "exact", "--out", str(dd2), "--json"]) == 0
    counts = json.loads((dd / "manifest.json").read_text())["counts"]
    pool = json.loads((demo_run / "manifest.json").read_text())["counts"]["n_in"]
    want = counts["kept"] / pool  # rows of the pool left after the selection and the dedup
    assert want < 0.5 < counts["kept"] / counts["n_in"]  # the rule gives another α for the two fractions
    for derived in (dd, dd2):
        got = resolve_alpha(None, derived)
        assert got["kept_fraction"] == pytest.approx(want) and got["value"] == alpha_for_fraction(want) > 0.9
        assert "its source" in got["reason"]
    shutil.rmtree(dd)  # a source that is gone ends the chain: dd2 knows only dd's own counts
    assert resolve_alpha(None, dd2)["kept_fraction"] == pytest.approx(counts["kept"] / counts["n_in"])


def test_json_has_the_students_sha256_and_the_warning_goes_to_stderr(tmp_path, capsys, builtin_models):
    from kdata.pipeline.config import RunOptions, SelectConfig
    from kdata.pipeline.run import run_select

    sel = tmp_path / "sel"
    run_select(SelectConfig(method="random", budget="2"), out=str(sel), opts=RunOptions(device="cpu"))
    code, so, se = _cli(capsys, "train", sel, "--epochs", 2, "--lr", "0.05", "--device", "cpu", "--json",
                        "--out", tmp_path / "s", "--quiet")
    rep = json.loads(so)
    assert code == 0 and rep["student_sha256"] == hashlib.sha256((tmp_path / "s" / "student.pt2").read_bytes()).hexdigest()
    assert rep["worse_than_before"] and se.startswith("kdata: warning: training made the student worse")
    code, so, se = _cli(capsys, "train", sel, "--epochs", 2, "--lr", "0.05", "--device", "cpu",
                        "--out", tmp_path / "s2", "--quiet")
    assert code == 0 and "warning" not in so and se.startswith("kdata: warning: training made the student worse")


def test_eval_rows_left_out_are_counted_and_noted(demo_run, tmp_path, capsys):
    from kdata.pools.spec import open_pool

    t = open_pool("builtin:digits-test").read_all()
    labels = [v if i % 10 == 0 else None if i % 10 == 1 else f"unknown-{v}"
              for i, v in enumerate(t.column("label").to_pylist())]  # 40 rows carry no label, 320 unknown ones
    t = t.set_column(t.schema.get_field_index("label"), "label", pa.array(labels))
    images = t.column("image").to_pylist()
    images[0] = b"not an image"  # a labelled row whose image cannot be decoded
    t = t.set_column(t.schema.get_field_index("image"), "image", pa.array(images, pa.binary()))
    (tmp_path / "ev").mkdir()
    pq.write_table(t, tmp_path / "ev" / "eval.parquet")
    ev = EvalSet(str(tmp_path / "ev" / "eval.parquet"), model=load_model("builtin:digits-student"))
    assert (ev.n_unlabelled, ev.n_undecodable, len(ev)) == (360, 1, 39)
    code, so, se = _cli(capsys, "train", demo_run, "--steps", 1, "--eval", tmp_path / "ev" / "eval.parquet",
                        "--device", "cpu", "--out", tmp_path / "s", "--quiet")
    assert code == 0, se
    assert ("rows left out of the evaluation: 40 because they carry no label, 320 because their labels are not "
            "among the student's classes") in so
    assert "1 because their image cannot be decoded; 39 evaluated" in so
    log = json.loads((tmp_path / "s" / "train_log.json").read_text())
    assert log["n_eval_unlabelled"] == 360 and log["n_eval_undecodable"] == 1 and log["n_eval"] == 39


def test_test_set_measures_the_saved_weights_on_a_set_that_chose_nothing(demo_run, tmp_path, capsys):
    """--eval chooses the kept epoch; --test (other images) measures the saved weights once, after training:
    the figure equals the saved student's accuracy there. The eval set given as --test is refused up front."""
    from kdata.pools.spec import open_pool

    t = open_pool("builtin:digits-test").read_all()
    half = t.num_rows // 2
    (tmp_path / "val").mkdir()
    (tmp_path / "test").mkdir()
    pq.write_table(t.slice(0, half), tmp_path / "val" / "val.parquet")
    pq.write_table(t.slice(half), tmp_path / "test" / "test.parquet")
    val, test = tmp_path / "val" / "val.parquet", tmp_path / "test" / "test.parquet"
    code, so, se = _cli(capsys, "train", demo_run, "--epochs", 2, "--eval", val, "--test", test,
                        "--device", "cpu", "--out", tmp_path / "s", "--quiet")
    assert code == 0, se
    log = json.loads((tmp_path / "s" / "train_log.json").read_text())
    saved = load_model(str(tmp_path / "s" / "student.pt2"))
    want = EvalSet(str(test), model=saved).accuracy(saved, device=torch.device("cpu"))
    assert log["test"] == {"spec": str(test), "n": t.num_rows - half, "accuracy": pytest.approx(want, abs=1e-9)}
    assert log["eval"] == str(val) and f"on {test} ({t.num_rows - half} images, chose nothing)" in so
    code, so, se = _cli(capsys, "train", demo_run, "--epochs", 1, "--eval", val, "--test", val,
                        "--device", "cpu", "--out", tmp_path / "s2", "--quiet")
    assert code == 2 and "the eval set that chooses the weights" in _one_line(se)
    assert not (tmp_path / "s2").exists()
