"""A teacher whose sidecar lists its class names in another order than its logits is named in one warning
(``kdata.scoring.label_order``); the teacher as trained, on the same noisy pool, gives none."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from kdata.cli import main
from kdata.models.files import export_model
from kdata.pools import builtin
from kdata.scoring.label_order import label_order_problem


def _scores(labels, preds) -> pa.Table:
    return pa.table({"label_idx": pa.array(labels, pa.int32()), "teacher_pred": pa.array(preds, pa.int32())})


def test_a_permuted_reading_that_fits_far_better_is_named():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    pred = np.where(rng.random(300) < 0.3, rng.integers(0, 3, 300), y)  # 30% label noise
    assert label_order_problem(_scores(y, pred), ["a", "b", "c"]) is None
    said = label_order_problem(_scores(y, np.array([1, 2, 0])[pred]), ["a", "b", "c"])
    assert said.startswith("the teacher agrees with the pool's labels on ") and "'a' rows mostly predicted 'b'" in said
    assert label_order_problem(_scores(y[:10], y[:10] * 0), ["a", "b", "c"]) is None  # too few rows to say
    # a teacher for another task: no reading fits, and the listed one is below chance
    y4 = rng.integers(0, 4, 400)
    said = label_order_problem(_scores(y4, (y4 + rng.integers(1, 4, 400)) % 4), ["a", "b", "c", "d"])
    assert said.startswith("the teacher agrees with the pool's labels on 0% of 400") and "below chance" in said


def test_select_warns_when_the_sidecar_order_is_not_the_logits_order(builtin_models, tmp_path, capsys):
    teacher, student = builtin_models
    names = list(teacher.class_names)
    swapped = names[1:] + names[:1]  # every class name one logit off
    for model, stem in ((teacher, "teacher"), (student, "student")):
        export_model(model.module, tmp_path / f"{stem}.pt2", input_size=model.input_size, mean=model.mean,
                     std=model.std, class_names=swapped)
    capsys.readouterr()
    assert main(["select", "--pool", "builtin:digits-web", "--teacher", str(tmp_path / "teacher.pt2"),
                 "--student", str(tmp_path / "student.pt2"), "--budget", "0.3", "--out", str(tmp_path / "out"),
                 "--device", "cpu", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert f"kdata: warning: {tmp_path / 'teacher.pt2'}: the teacher agrees with the pool's labels on " in err
    assert "check that the class names in its sidecar follow its logits' order" in err
    assert main(["select", "--pool", "builtin:digits-web", "--budget", "0.3", "--out", str(tmp_path / "ok"),
                 "--device", "cpu", "--quiet"]) == 0
    assert "logits' order" not in capsys.readouterr().err
    assert builtin.CLASS_NAMES == names
