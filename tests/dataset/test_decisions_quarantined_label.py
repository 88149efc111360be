"""A quarantined sample keeps the web label its pool reader knew (an ImageFolder's folder name).

``build_decisions`` takes quarantined samples as ``(sample_id, error)`` or ``(sample_id, error, label)``
and writes ``label``/``label_idx`` for the latter; ``kdata inspect --sample-id`` then shows it.
The scoring engine hands it over with the error, and score-cache entries keep it.
"""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from kdata.cli import main
from kdata.dataset.decisions import Decisions, build_decisions
from kdata.dataset.schema import DECISIONS_SCHEMA, conform
from tests.helpers.real_inputs import CLASSES, make_image_folder


def test_quarantined_samples_carry_the_label_the_reader_knew():
    rows = pa.table({"sample_id": ["3/a.png", "7/b.png"], "label_idx": pa.array([3, 7], pa.int32()),
                     "teacher_pred": pa.array([3, 1], pa.int32())})
    t = build_decisions(rows, decision=["kept", "rejected"], reason=[None, "kd3_over_budget"], stage=[None, "kd3"],
                        class_names=CLASSES,
                        quarantined=[("3/garbage.jpg", "UnidentifiedImageError: x", "3"), ("flat.png", "empty", None),
                                     ("zz/odd.png", "empty", "zz"), ("old.png", "ValueError: y")])
    t = conform(t, DECISIONS_SCHEMA)
    q = t.filter(pc.equal(t.column("decision"), "quarantined")).to_pylist()
    assert [(r["sample_id"], r["label"], r["label_idx"], r["error"]) for r in q] == [
        ("3/garbage.jpg", "3", 3, "UnidentifiedImageError: x"), ("flat.png", None, None, "empty"),
        ("zz/odd.png", "zz", -1, "empty"), ("old.png", None, None, "ValueError: y")]
    assert t.column("label").to_pylist()[:2] == ["3", "7"]  # the scored rows' labels, as before
    assert Decisions(t).counts == {"n_in": 6, "kept": 1, "rejected": 1, "quarantined": 4,
                                   "rejected_by_reason": {"kd3_over_budget": 1},
                                   "quarantined_by_reason": {"empty": 2, "UnidentifiedImageError: x": 1,
                                                             "ValueError: y": 1}}


def test_a_select_run_records_the_folder_label_of_a_quarantined_image(tmp_path, builtin_models, capsys):
    pool = make_image_folder(tmp_path / "pool", n=20, corrupt=True)
    out = tmp_path / "out"
    assert main(["select", "--pool", str(pool), "--budget", "0.5", "--out", str(out), "--device", "cpu",
                 "--quiet"]) == 0
    dec = pq.read_table(out / "decisions.parquet")
    q = dec.filter(pc.equal(dec.column("decision"), "quarantined")).to_pylist()
    assert {r["sample_id"]: (r["label"], r["label_idx"]) for r in q} == {
        "3/garbage.jpg": ("3", 3), "3/truncated.jpg": ("3", 3), "7/empty.png": ("7", 7)}
    capsys.readouterr()
    assert main(["inspect", str(out), "--sample-id", "7/empty.png", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["decision_row"]["label"] == "7"
