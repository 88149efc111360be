"""Image scoring over 128 classes keeps the top-k soft labels, not the logits, and stores the exact
per-row probabilities the methods read (``kdata.core.exact_probs``): they equal what the kept logits
give, and a cache entry made before them is not reused."""

from __future__ import annotations

import numpy as np

from kdata.models.files import export_model
from kdata.models.spec import load_model
from kdata.pools.spec import open_pool
from kdata.scoring.score import ScoreConfig, score_pool, unit_cache_key
from tests.helpers.real_inputs import CLASSES, INPUT, MEAN, STD, make_image_folder, train_cnn


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.float64)
    m = z.max(1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(1, keepdims=True))


def test_over_128_classes_scoring_stores_the_exact_probabilities_the_logits_give(tmp_path, monkeypatch):
    names = CLASSES + [f"other{i}" for i in range(200 - len(CLASSES))]
    models = {}
    for role, seed in (("teacher", 1), ("student", 2)):
        net = train_cnn((4, 8, 8), steps=2, seed=seed, num_classes=200)
        models[role] = load_model(str(export_model(net, tmp_path / f"{role}.pt2", input_size=INPUT, mean=MEAN,
                                                   std=STD, class_names=names, kind="pt2")))
    pool = open_pool(str(make_image_folder(tmp_path / "pool", n=24)))
    t, s = models["teacher"], models["student"]
    slim, _, _ = score_pool(pool, t, s, config=ScoreConfig(temperature=2.0), cache=False)
    full, _, _ = score_pool(pool, t, s, config=ScoreConfig(temperature=2.0, keep_logits="yes"), cache=False)
    assert "teacher_logits" not in slim.column_names and "teacher_logits" in full.column_names
    assert slim.column("sample_id").to_pylist() == full.column("sample_id").to_pylist()
    lt = _log_softmax(np.stack(full.column("teacher_logits").to_pylist()) / 2.0)
    ls = _log_softmax(np.stack(full.column("student_logits").to_pylist()) / 2.0)
    label = np.asarray(full.column("label_idx").to_pylist())
    pred = lt.argmax(1)
    y = np.where(label >= 0, label, pred)
    rows = np.arange(len(y))
    for name, want in (("teacher_y_logprob", lt[rows, y]), ("student_y_logprob", ls[rows, y]),
                       ("student_pred_logprob", ls[rows, pred]),
                       ("kd3_half", (0.5 * np.exp(lt) + 0.5 * np.exp(ls)).max(1))):
        np.testing.assert_allclose(slim.column(name).to_numpy(), want, atol=2e-5, err_msg=name)
    # the columns' version is in the cache key of such runs: an entry made before them is not reused
    key = unit_cache_key(pool.units[0], t, s, ScoreConfig())
    monkeypatch.setattr("kdata.scoring.score.EXACT_VERSION", 0)
    assert unit_cache_key(pool.units[0], t, s, ScoreConfig()) != key


def test_over_128_classes_a_reference_model_gives_miniplm_the_exact_label_logprob(tmp_path):
    """``--reference`` above 128 classes: log p_ref(label) is the full logits' log-softmax at the run's
    temperature (not the reference's top-20 with the rest spread evenly), scored at the run's settings."""
    from kdata.selection.methods.miniplm import reference_logprob, reference_scores

    names = CLASSES + [f"other{i}" for i in range(200 - len(CLASSES))]
    net = train_cnn((4, 8, 8), steps=2, seed=3, num_classes=200)
    ref = load_model(str(export_model(net, tmp_path / "ref.pt2", input_size=INPUT, mean=MEAN, std=STD,
                                      class_names=names, kind="pt2")))
    pool = open_pool(str(make_image_folder(tmp_path / "pool", n=24)))
    like = ScoreConfig(temperature=2.0, topk=5, precision="fp32")
    table = reference_scores(pool, ref, device="cpu", cache=False, like=like)
    assert "ref_logits" not in table.column_names and table.schema.metadata[b"temperature"] == b"2.0"
    full, _, _ = score_pool(pool, ref, ref, config=ScoreConfig(temperature=2.0, keep_logits="yes"), cache=False)
    lr = _log_softmax(np.stack(full.column("teacher_logits").to_pylist()) / 2.0)
    label = np.asarray(full.column("label_idx").to_pylist())
    ids = np.asarray(full.column("sample_id").to_pylist())
    assert (label >= 0).all()
    y = label.copy()
    y[::3] = (lr[::3].argsort(1)[:, 0])  # some rows ask for the reference's least likely class
    got = reference_logprob(table, ids, y, temperature=2.0, label_known=y == label)
    rows = np.arange(len(y))
    np.testing.assert_allclose(got[y == label], lr[rows, y][y == label], atol=2e-5)
    # where the label is unknown, the top-20 stand in: a class outside them gets the spread mass, not its own
    outside = y != label
    assert outside.any() and not np.allclose(got[outside], lr[rows, y][outside], atol=1e-3)
