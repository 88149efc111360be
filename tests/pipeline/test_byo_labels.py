"""``--scores FILE --pool P``: the pool's web labels and the file's classes agree before any label statistic
is computed (kdata.pipeline.byo_labels). Real ImageFolder pool, real predictions Parquet, the real CLI."""

from __future__ import annotations

import json
import unicodedata

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from kdata.cli import main
from tests.helpers.real_inputs import CLASSES, make_image_folder


def _predictions(pool, path, *, label_idx=None, class_names=None, names=None):
    """Logits that favour each row's folder class (by the folders' sorted order) for every image of ``pool``."""
    ids = sorted(str(p.relative_to(pool)) for p in pool.rglob("*") if p.is_file())
    names = names or sorted(CLASSES)
    rng = np.random.default_rng(0)
    y = np.array([names.index(unicodedata.normalize("NFC", i.split("/")[0])) for i in ids])
    t = rng.normal(size=(len(ids), len(names))).astype(np.float32)
    t[np.arange(len(ids)), y] += 4
    cols = {"sample_id": ids, "teacher_logits": list(t), "student_logits": list(t + rng.normal(size=t.shape).astype(np.float32))}
    if label_idx is not None:
        cols["label_idx"] = label_idx(y)
    table = pa.table(cols)
    if class_names is not None:
        table = table.replace_schema_metadata({"kdata": json.dumps({"class_names": class_names})})
    pq.write_table(table, path)
    return ids, y


def test_without_label_idx_the_pool_labels_are_indexed_by_its_folder_classes(tmp_path, capsys):
    pool = make_image_folder(tmp_path / "pool", n=60)
    preds = tmp_path / "p.parquet"
    _, y = _predictions(pool, preds)
    out = tmp_path / "out"
    assert main(["select", "--scores", str(preds), "--pool", str(pool), "--budget", "0.5", "--out", str(out),
                 "--quiet"]) == 0
    assert "the pool's i-th class name" in capsys.readouterr().err
    m = json.loads((out / "manifest.json").read_text())
    assert m["class_names"] == sorted(CLASSES)
    assert not any("label_agreement" in s for s in m["method_info"]["coverage"]["skipped"])
    rows = pq.read_table(out / "data").to_pylist()
    assert rows and all(m["class_names"][r["label_idx"]] == r["label"] for r in rows)


def test_a_label_idx_that_contradicts_the_pool_is_one_line(tmp_path, capsys):
    pool = make_image_folder(tmp_path / "pool", n=40)
    preds = tmp_path / "p.parquet"
    ids, _ = _predictions(pool, preds, label_idx=lambda y: (y + 1) % len(CLASSES), class_names=sorted(CLASSES))
    rc = main(["select", "--scores", str(preds), "--pool", str(pool), "--method", "kd3", "--budget", "10",
               "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and f"row 0 (sample_id '{ids[0]}')" in err[0] and "pool's label" in err[0]
    assert not (tmp_path / "out").exists()
    # the same indices, right this time: accepted, and a folder named in NFD (as macOS writes) is the same class
    (pool / CLASSES[0]).rename(pool / unicodedata.normalize("NFD", "ñ" + CLASSES[0]))
    names = sorted(CLASSES[1:] + ["ñ" + CLASSES[0]])
    ids, y = _predictions(pool, preds, label_idx=lambda y: y, class_names=names, names=names)
    assert main(["select", "--scores", str(preds), "--pool", str(pool), "--method", "kd3", "--budget", "10",
                 "--out", str(tmp_path / "out2"), "--quiet"]) == 0
    dec = pq.read_table(tmp_path / "out2" / "decisions.parquet").to_pylist()
    assert all(r["label_idx"] >= 0 for r in dec if r["decision"] != "quarantined")


def test_a_fraction_budget_is_of_the_predicted_rows_not_the_whole_pool(tmp_path):
    """Predictions for 20 of a 60-image pool: ``--budget 0.5`` keeps 10 (it kept all 20, the budget taken of
    the pool's 60 rows); the 40 without a prediction are still counted, quarantined."""
    from tests.helpers.methods import write_predictions

    pool = make_image_folder(tmp_path / "pool", n=60)
    ids = sorted(str(p.relative_to(pool)) for p in pool.rglob("*") if p.is_file())[:20]
    rng = np.random.default_rng(1)
    t = rng.normal(size=(20, 10))
    preds = write_predictions(tmp_path / "p.parquet", t, t + rng.normal(size=t.shape), ids=ids)
    out = tmp_path / "out"
    assert main(["select", "--scores", preds, "--pool", str(pool), "--method", "kd3", "--budget", "0.5",
                 "--out", str(out), "--quiet"]) == 0
    c = json.loads((out / "manifest.json").read_text())["counts"]
    assert c["kept"] == 10 and c["n_in"] == 60 and c["quarantined"] == 40 and c["rejected"] == 10
