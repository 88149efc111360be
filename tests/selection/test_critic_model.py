"""The critic: threshold choice, target recall on validation, safe save/load, CLI and chaining."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from kdata.cli import main
from kdata.selection.critic_model import Critic, fit_critic, load_critic, pick_threshold
from kdata.core.errors import KdataError


def test_pick_threshold_by_hand():
    prob = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    y = np.array([1, 0, 1, 1, 0], dtype=bool)
    assert pick_threshold(prob, y, recall=0.6) == 0.7  # 2 of 3 accepted at ≥ .7
    assert pick_threshold(prob, y, recall=1.0) == 0.6
    assert pick_threshold(prob, y, precision=1.0) == 0.9
    assert pick_threshold(prob, y, precision=0.66) == 0.6  # 3/4 = .75; at .5 it would be 3/5


@pytest.mark.parametrize("target", [0.5, 0.8, 0.9])
def test_fit_meets_target_recall_on_validation(tmp_path, target):
    rng = np.random.default_rng(1)
    n = 600
    y = rng.random(n) < 0.5
    X = rng.normal(size=(n, 5)) + y[:, None] * np.array([1.5, 0.5, 0, 0, 0])
    crit = fit_critic(X, y, feature_names=[f"f{i}" for i in range(5)], recall=target)
    acc = crit.val_prob >= crit.threshold
    recall = (acc & crit.val_label).sum() / crit.val_label.sum()
    assert recall >= target
    assert crit.metrics["val_recall"] == pytest.approx(recall)
    assert crit.metrics["val_precision"] > 0.6  # better than the 0.5 base rate
    crit.save(tmp_path / "c")
    meta = json.loads((tmp_path / "c" / "critic.json").read_text())
    assert meta["format"] == "kdata-critic-1" and meta["target"] == {"recall": target}
    with np.load(tmp_path / "c" / "critic.npz", allow_pickle=False) as z:  # plain arrays, no pickle
        assert set(z.files) >= {"coef", "mean", "scale", "val_prob"}
    back = load_critic(tmp_path / "c")
    np.testing.assert_allclose(back.score(X), crit.score(X))
    assert back.threshold == crit.threshold
    np.testing.assert_array_equal(back.accept(X), crit.score(X) >= crit.threshold)
    stricter = back.with_target(recall=0.3)
    assert stricter.threshold >= back.threshold


def test_bad_critic_inputs(tmp_path):
    with pytest.raises(KdataError, match="not a critic directory"):
        load_critic(tmp_path)
    with pytest.raises(KdataError, match="at least 10 labelled"):
        fit_critic(np.zeros((5, 2)), np.array([1, 0, 1, 0, 1], bool), feature_names=["a", "b"])
    assert isinstance(Critic.__dataclass_fields__, dict)


def test_critic_cli_and_chain_on_builtin(tmp_path, builtin_models):
    from kdata.pools.builtin import digits_web_truth

    truth = digits_web_truth().to_pandas().sample(360, random_state=0)
    lab = tmp_path / "labels.csv"
    good = {"clean", "near_dup", "exact_dup", "label_noise"}
    lab.write_text("sample_id,accept\n" + "".join(f"{s},{int(t in good)}\n"
                                                   for s, t in zip(truth.sample_id, truth.truth)))
    cdir = tmp_path / "critic"
    assert main(["critic", "fit", "--scores-from", "builtin:digits-web", "--labels", str(lab), "--recall", "0.8",
                 "--out", str(cdir), "--device", "cpu"]) == 0
    meta = json.loads((cdir / "critic.json").read_text())
    assert meta["metrics"]["val_recall"] >= 0.8
    applied = tmp_path / "applied.parquet"
    assert main(["critic", "apply", str(cdir), "--scores-from", "builtin:digits-web", "--out", str(applied),
                 "--device", "cpu"]) == 0
    t = pq.read_table(applied)
    assert t.num_rows == 1457 and 0 < sum(t.column("accept").to_pylist()) < 1457
    out = tmp_path / "sel"
    assert main(["select", "--method", "critic,kd3", "--critic", str(cdir), "--budget", "0.2", "--out", str(out),
                 "--device", "cpu", "--quiet"]) == 0
    dec = pq.read_table(out / "decisions.parquet").to_pandas()
    rej = dec[dec.decision == "rejected"]
    assert set(rej.reason) == {"critic_reject", "kd3_over_budget"}
    assert (rej[rej.reason == "critic_reject"].stage == "critic").all()
    assert (dec.decision == "kept").sum() == int(0.2 * 1457)
    # the critic keeps less junk than the pool has
    tr = digits_web_truth().to_pandas().set_index("sample_id").truth
    kept_junk = (tr.loc[dec[dec.decision == "kept"].sample_id] == "junk").mean()
    assert kept_junk < (tr == "junk").mean()
