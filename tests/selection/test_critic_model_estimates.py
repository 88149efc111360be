"""The critic's reported precision/recall are cross-fitted on the validation split, so they estimate
how its cut does on new data; measured on the split that chose the cut, recall meets the target by
construction. Checked against a large independent test set of a problem whose truth is known."""

import json

import numpy as np

from kdata.selection.critic_model import CROSS_FITTED, SAME_SPLIT, fit_critic, load_critic


def _draw(n, rng):
    y = rng.random(n) < 0.4
    return rng.normal(size=(n, 3)) + np.where(y[:, None], [1.0, 0.5, 0.0], 0.0), y


def test_reported_figures_match_an_independent_test_set_and_same_split_ones_do_not():
    Xt, yt = _draw(200_000, np.random.default_rng(1))
    rows = []
    for seed in range(30):  # 200 labelled rows: 60 validation, ~24 accepted
        X, y = _draw(200, np.random.default_rng(100 + seed))
        crit = fit_critic(X, y, feature_names=["a", "b", "c"], recall=0.8, seed=seed)
        acc = crit.accept(Xt)
        m = crit.metrics
        assert m["estimate"] == CROSS_FITTED and m["threshold_split_recall"] >= 0.8  # the target, by construction
        rows.append([(acc & yt).sum() / yt.sum(), (acc & yt).sum() / acc.sum(), m["val_recall"], m["val_precision"],
                     m["threshold_split_recall"]])
    true_recall, true_precision, recall, precision, same_split = np.mean(rows, axis=0)
    assert abs(recall - true_recall) < 0.03, (recall, true_recall)
    assert abs(precision - true_precision) < 0.04, (precision, true_precision)
    assert same_split - true_recall > 0.04, (same_split, true_recall)  # optimistic: the cut was chosen on them


def test_with_target_recomputes_them_and_old_critics_say_theirs_are_on_the_threshold_split(tmp_path):
    X, y = _draw(400, np.random.default_rng(3))
    crit = fit_critic(X, y, feature_names=["a", "b", "c"], recall=0.8)
    again = fit_critic(X, y, feature_names=["a", "b", "c"], recall=0.6).with_target(recall=0.8)
    assert again.metrics == crit.metrics  # the same halves, the same way
    crit.save(tmp_path / "new")
    assert load_critic(tmp_path / "new").metrics == crit.metrics
    old = tmp_path / "new" / "critic.json"  # as kdata wrote it before: same-split figures, no "estimate"
    meta = json.loads(old.read_text())
    meta["metrics"] = {"val_n": 120, "val_accept_rate": 0.4, "val_recall": 0.8, "val_precision": 0.7}
    old.write_text(json.dumps(meta))
    back = load_critic(tmp_path / "new")
    assert back.metrics == {**meta["metrics"], "estimate": SAME_SPLIT}
    assert back.with_target(recall=0.8).metrics["estimate"] == CROSS_FITTED


def test_too_few_accepted_rows_to_halve_keeps_the_same_split_figures_and_says_so():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(20, 2))
    y = np.zeros(20, bool)
    y[[0, 1, 2]] = True
    X[y] += 3
    crit = fit_critic(X, y, feature_names=["a", "b"], recall=0.8, val_frac=0.3)  # 1 accepted row in validation
    assert crit.metrics["estimate"].startswith(SAME_SPLIT)
    assert crit.metrics["val_recall"] == crit.metrics["threshold_split_recall"]
