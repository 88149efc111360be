"""The critic: threshold choice, target recall on validation, safe save/load, CLI and chaining."""

import json
import re

import numpy as np
import pyarrow.parquet as pq
import pytest

from kdata.cli import main
from kdata.selection.critic_model import STAT_FEATURES, Critic, fit_critic, load_critic, pick_threshold
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
    assert crit.metrics["threshold_split_recall"] == pytest.approx(recall)
    assert crit.metrics["estimate"] == "cross-fitted on the validation split"
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
    assert meta["metrics"]["threshold_split_recall"] >= 0.8 and 0.5 < meta["metrics"]["val_recall"] <= 1
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


@pytest.mark.parametrize("kw,match", [
    ({"recall": 1.5}, "critic recall 1.5: expected a recall in (0, 1]"),
    ({"recall": -1.0}, "critic recall -1.0"),
    ({"recall": float("nan")}, "critic recall nan"),
    ({"recall": None, "precision": 2.0}, "critic precision 2.0: expected a precision in (0, 1]"),
    ({"recall": None, "precision": 0.0}, "critic precision 0.0"),
    ({"val_frac": 0.0}, "critic val_frac 0.0: expected a fraction in (0, 1)"),
    ({"val_frac": 1.0}, "critic val_frac 1.0"),
    ({"val_frac": 0.01}, "splits 40 labelled samples into 39 training and 1 validation"),
])
def test_fit_and_with_target_reject_out_of_range_targets(kw, match):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 3))
    y = X[:, 0] > 0
    with pytest.raises(KdataError, match=re.escape(match)):
        fit_critic(X, y, feature_names=["a", "b", "c"], **kw)
    crit = fit_critic(X, y, feature_names=["a", "b", "c"], recall=1.0, val_frac=0.5)  # the closed ends are valid
    assert crit.metrics["threshold_split_recall"] == 1.0 and crit.metrics["val_n"] == 20
    target = {k: v for k, v in kw.items() if k in ("recall", "precision") and v is not None}
    if target:  # re-choosing the cut of a fitted critic is checked the same way
        with pytest.raises(KdataError, match=re.escape(match)):
            crit.with_target(**target)
    assert crit.with_target(precision=1.0).metrics["threshold_split_precision"] == 1.0


def _digits_ids(n: int) -> list[str]:
    from kdata.pools.spec import open_pool

    return open_pool("builtin:digits-web").units[0].sample_ids().to_pylist()[:n]


def _fresh_cache_run(tmp_path, monkeypatch, capsys, argv: list[str]) -> str:
    """``main(argv)`` under an empty cache: exit 2, one line on stderr, nothing scored or trained (the
    built-in pool may be materialised: the labelled ids are looked up in it before the split is checked)."""
    cache = tmp_path / "fresh-cache"
    monkeypatch.setenv("KDATA_CACHE", str(cache))
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own errors (mutually exclusive options)
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert not cache.exists() or {p.name for p in cache.iterdir()} <= {"pools"}, list(cache.rglob("*"))
    return err


@pytest.mark.parametrize("opts,match", [
    (["--recall", "1.5"], "--recall 1.5: expected a recall in (0, 1]"),
    (["--recall", "-1"], "--recall -1.0: expected a recall in (0, 1]"),
    (["--precision", "2"], "--precision 2.0: expected a precision in (0, 1]"),
    (["--val-frac", "0"], "--val-frac 0.0: expected a fraction in (0, 1)"),
    (["--val-frac", "1.5"], "--val-frac 1.5: expected a fraction in (0, 1)"),
    (["--val-frac", "0.05"], "--val-frac 0.05: splits 12 labelled samples into 11 training and 1 validation"),
    (["--batch-size", "0"], "--batch-size 0: must be an integer ≥ 1"),
])
def test_critic_fit_options_fail_before_any_work(tmp_path, monkeypatch, capsys, opts, match):
    lab = tmp_path / "labels.csv"
    lab.write_text("sample_id,accept\n" + "".join(f"{i},{n % 2}\n" for n, i in enumerate(_digits_ids(12))))
    err = _fresh_cache_run(tmp_path, monkeypatch, capsys, [
        "critic", "fit", "--scores-from", "builtin:digits-web", "--labels", str(lab), "--out",
        str(tmp_path / "c"), "--device", "cpu", *opts])
    assert match in err
    assert not (tmp_path / "c").exists()


def _text_pool(tmp_path):
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps({"id": f"s{i}", "text": f"the cat sat on mat {i}"}) + "\n" for i in range(12)))
    lab = tmp_path / "labels.csv"
    lab.write_text("sample_id,accept\n" + "".join(f"s{i},{i % 2}\n" for i in range(12)))
    return pool, lab


def test_critic_on_a_text_pool_without_text_models_asks_for_them(tmp_path, monkeypatch, capsys):
    """As ``kdata select``: image models (the default) on a text pool are one line naming text models,
    before any model loads; an image critic on a text pool says it cannot score text."""
    pool, lab = _text_pool(tmp_path)
    err = _fresh_cache_run(tmp_path, monkeypatch, capsys, [
        "critic", "fit", "--scores-from", str(pool), "--labels", str(lab), "--out", str(tmp_path / "c"),
        "--device", "cpu"])
    assert f"{pool}: the pool holds text; image models cannot score it" in err
    assert "--teacher hf:PATH --student hf:PATH, or builtin:text-teacher / builtin:text-student" in err
    assert "--scores FILE.parquet" not in err
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 9))

    fit_critic(X, X[:, 0] > 0, feature_names=[*STAT_FEATURES, "agree"]).save(tmp_path / "img")
    err = _fresh_cache_run(tmp_path, monkeypatch, capsys, [
        "critic", "apply", str(tmp_path / "img"), "--scores-from", str(pool), "--out", str(tmp_path / "a.csv"),
        "--device", "cpu"])
    assert f"an image-score critic cannot score the text pool {pool}" in err and "--teacher hf:PATH" in err
    assert not (tmp_path / "a.csv").exists()


@pytest.mark.parametrize("argv,match", [
    (["critic", "apply", "{crit}", "--recall", "1.5"], "--recall 1.5: expected a recall in (0, 1]"),
    (["critic", "apply", "{crit}", "--precision", "0"], "--precision 0.0: expected a precision in (0, 1]"),
    (["critic", "apply", "{crit}", "--recall", "0.5", "--precision", "0.5"], "not allowed with argument --recall"),
    (["generate", "--prompts", "{prompts}", "--critic", "{crit}", "--student", "builtin:text-student",
      "--critic-recall", "1.5"], "--critic-recall 1.5: expected a recall in (0, 1]"),
    (["generate", "--prompts", "{prompts}", "--critic", "{crit}", "--student", "builtin:text-student",
      "--critic-precision", "-0.1"], "--critic-precision -0.1: expected a precision in (0, 1]"),
    (["generate", "--prompts", "{prompts}", "--critic-recall", "0.5"], "give --critic DIR"),
])
def test_critic_targets_of_apply_and_generate_fail_before_any_work(tmp_path, monkeypatch, capsys, argv, match):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 3))
    fit_critic(X, X[:, 0] > 0, feature_names=["a", "b", "c"]).save(tmp_path / "crit")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"id": "p0", "prompt": "Once"}\n')
    argv = [a.format(crit=tmp_path / "crit", prompts=prompts) for a in argv]
    src = ["--scores-from", "builtin:digits-web"] if argv[0] == "critic" else []
    err = _fresh_cache_run(tmp_path, monkeypatch, capsys, [*argv, *src, "--out", str(tmp_path / "o"),
                                                           "--device", "cpu"])
    assert match in err
    assert not (tmp_path / "o").exists()


def test_critic_reads_a_predictions_file_whatever_its_suffix(tmp_path):
    """``--scores-from`` is a predictions file by its columns, not its name: ``preds.pq`` is read as
    predictions (it used to be opened as a pool and refused)."""
    from tests.helpers.methods import write_predictions

    rng = np.random.default_rng(4)
    n = 120
    t = rng.normal(size=(n, 5)) * 3
    accept = rng.random(n) < 0.6
    s = t + rng.normal(size=(n, 5)) * np.where(accept, 0.3, 4.0)[:, None]  # rejected rows: the student disagrees
    path = write_predictions(tmp_path / "preds.pq", t, s)
    lab = tmp_path / "labels.csv"
    lab.write_text("sample_id,accept\n" + "".join(f"s{i},{int(a)}\n" for i, a in enumerate(accept)))
    assert main(["critic", "fit", "--scores-from", path, "--labels", str(lab), "--out", str(tmp_path / "c")]) == 0
    import hashlib
    import json

    rec = json.loads((tmp_path / "c" / "critic.json").read_text())["models"]  # which file, byte for byte
    assert rec == {"scores_file": path, "scores_sha256": hashlib.sha256(open(path, "rb").read()).hexdigest()}
    out = tmp_path / "applied.parquet"
    assert main(["critic", "apply", str(tmp_path / "c"), "--scores-from", path, "--out", str(out)]) == 0
    assert pq.read_table(out).num_rows == n
    assert main(["critic", "apply", str(tmp_path / "c"), "--scores-from", path, "--out", str(tmp_path / "a.txt")]) == 2
    assert not (tmp_path / "a.txt").exists()
