"""A critic's files are checked whole on load: every damaged or hand-edited field is one line naming the
file and the field (never a traceback, never a critic that silently rejects every row); the archive is
never unpickled; a feature mismatch names the first differing feature; a save lands whole."""

from __future__ import annotations

import json
import re

import numpy as np
import pyarrow as pa
import pytest

from kdata.core.errors import KdataError
from kdata.selection.critic_model import STAT_FEATURES, fit_critic, load_critic

NAMES = [*STAT_FEATURES, "agree"]


def _critic(tmp_path, name="c"):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, len(NAMES)))
    return fit_critic(X, X[:, 0] > 0, feature_names=NAMES, recall=0.8).save(tmp_path / name)


def _arrays(d) -> dict:
    with np.load(d / "critic.npz", allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _rewrite_npz(d, **changes):
    a = {**_arrays(d), **changes}
    np.savez(d / "critic.npz", **{k: v for k, v in a.items() if v is not None})


def _rewrite_json(d, **changes):
    meta = json.loads((d / "critic.json").read_text())
    meta.update(changes)
    (d / "critic.json").write_text(json.dumps(meta))


def _one_line_error(d, file: str, *parts: str) -> str:
    with pytest.raises(KdataError) as exc:
        load_critic(d)
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith(f"{d / file}: "), msg
    for p in parts:
        assert p in msg, msg
    return msg


def test_a_good_critic_loads_and_knows_its_directory(tmp_path):
    d = _critic(tmp_path)
    crit = load_critic(d)
    assert crit.path == str(d) and crit.feature_names == NAMES and 0 <= crit.threshold <= 1
    assert crit.coef.dtype == np.float64 and crit.val_label.dtype == bool


@pytest.mark.parametrize("damage,parts", [
    (lambda d: (d / "critic.npz").write_bytes((d / "critic.npz").read_bytes()[:300]), ["not a readable .npz"]),
    (lambda d: (d / "critic.npz").write_bytes(b"hello, not an archive"), ["not a .npz archive"]),
    (lambda d: (d / "critic.npz").write_bytes(b""), ["not a .npz archive"]),
    (lambda d: _rewrite_npz(d, intercept=None), ["lacks the array(s) 'intercept'"]),
    (lambda d: _rewrite_npz(d, coef=np.r_[np.nan, np.ones(8)]), ["'coef' holds 1 non-finite value", "index 0"]),
    (lambda d: _rewrite_npz(d, mean=np.r_[np.ones(8), np.inf]), ["'mean' holds 1 non-finite value", "index 8"]),
    (lambda d: _rewrite_npz(d, scale=np.zeros(9)), ["'scale' must be > 0", "feature 0 (teacher_conf) has 0"]),
    (lambda d: _rewrite_npz(d, scale=np.r_[np.ones(4), -1.0, np.ones(4)]), ["'scale' must be > 0", "feature 4"]),
    (lambda d: _rewrite_npz(d, coef=np.ones(5)), ["'coef' must be a 1-D numeric array of length 9", "shape (5,)"]),
    (lambda d: _rewrite_npz(d, coef=np.ones((9, 1))), ["'coef' must be a 1-D numeric array", "shape (9, 1)"]),
    (lambda d: _rewrite_npz(d, coef=np.array(["a"] * 9)), ["'coef' must be a 1-D numeric array", "<U1"]),
    (lambda d: _rewrite_npz(d, coef=np.array([1.0] * 9, dtype=object)), ["holds an object array",
                                                                         "never unpickles"]),
    (lambda d: _rewrite_npz(d, intercept=np.array([np.nan])), ["'intercept' holds 1 non-finite"]),
    (lambda d: _rewrite_npz(d, intercept=np.array([0.1, 0.2])), ["'intercept' must be a 1-D numeric array of "
                                                                 "length 1"]),
    (lambda d: _rewrite_npz(d, val_prob=np.full(len(_arrays(d)["val_prob"]), 1.5)), ["'val_prob'", "[0, 1]"]),
    (lambda d: _rewrite_npz(d, val_label=np.full(len(_arrays(d)["val_label"]), 2, np.uint8)), ["'val_label'",
                                                                                              "0/1"]),
    (lambda d: _rewrite_npz(d, val_label=np.ones(3, np.uint8)), ["'val_label' must be", "one per 'val_prob'"]),
])
def test_a_damaged_npz_is_one_line_naming_it_and_the_field(tmp_path, damage, parts):
    d = _critic(tmp_path)
    damage(d)
    _one_line_error(d, "critic.npz", *parts)


@pytest.mark.parametrize("damage,parts", [
    (lambda d: (d / "critic.json").write_text("{not json"), ["not valid JSON"]),
    (lambda d: (d / "critic.json").write_bytes(b"\xff\xfe\x00"), ["not valid JSON"]),
    (lambda d: (d / "critic.json").write_text("[]"), ["expected a JSON object, got a JSON array"]),
    (lambda d: (d / "critic.json").write_text("null"), ["expected a JSON object, got a JSON null"]),
    (lambda d: _rewrite_json(d, format="kdata-critic-99"), ["unknown critic format 'kdata-critic-99'"]),
    (lambda d: _rewrite_json(d, threshold="x"), ["'threshold' must be a number in [0, 1]", 'got "x"']),
    (lambda d: _rewrite_json(d, threshold=float("nan")), ["'threshold' must be a number in [0, 1]", "got NaN"]),
    (lambda d: _rewrite_json(d, threshold=1.5), ["'threshold' must be a number in [0, 1]", "got 1.5"]),
    (lambda d: _rewrite_json(d, threshold=True), ["'threshold' must be a number", "got true"]),
    (lambda d: _rewrite_json(d, threshold=None), ["'threshold' must be a number", "got null"]),
    (lambda d: _rewrite_json(d, feature_names="teacher_conf"), ["'feature_names' must be a non-empty list"]),
    (lambda d: _rewrite_json(d, feature_names=[]), ["'feature_names' must be a non-empty list"]),
    (lambda d: _rewrite_json(d, feature_names=[*NAMES[:8], 3]), ["'feature_names' must be a non-empty list"]),
    (lambda d: _rewrite_json(d, feature_names=[*NAMES[:8], "kl_ts"]), ["'feature_names' names 'kl_ts' twice"]),
    (lambda d: _rewrite_json(d, feature_names=NAMES[:3]), []),  # 3 names, 9 weights: the npz is named
    (lambda d: _rewrite_json(d, target="recall"), ["'target' must be a JSON object"]),
    (lambda d: _rewrite_json(d, target={"recall": 2}), ["'target.recall' must be a number in (0, 1]"]),
    (lambda d: _rewrite_json(d, target={"f1": 0.5}), ["'target' has unknown key 'f1'"]),
    (lambda d: _rewrite_json(d, metrics=[1]), ["'metrics' must be a JSON object"]),
    (lambda d: _rewrite_json(d, models=["builtin:digits-teacher"]), ["'models' must be a JSON object"]),
    (lambda d: _rewrite_json(d, models={"teacher_checksum": 7}), ["'models.teacher_checksum' must be a string"]),
    (lambda d: _rewrite_json(d, text={"kind": "text", "embedder": {}}), ["'text.embedder' must be a string"]),
])
def test_a_damaged_json_is_one_line_naming_it_and_the_field(tmp_path, damage, parts):
    d = _critic(tmp_path)
    damage(d)
    if not parts:  # feature names of another length than the weights: the archive disagrees with them
        _one_line_error(d, "critic.npz", "'coef' must be a 1-D numeric array of length 3", "shape (9,)")
    else:
        _one_line_error(d, "critic.json", *parts)


def test_a_missing_file_says_not_a_critic_directory(tmp_path):
    d = _critic(tmp_path)
    (d / "critic.npz").unlink()
    with pytest.raises(KdataError, match=re.escape(f"{d}: not a critic directory")):
        load_critic(d)


def _scores(names: list[str], n: int = 5) -> pa.Table:
    return pa.table({"sample_id": [f"s{i}" for i in range(n)], **{c: np.linspace(0, 1, n) for c in names}})


def test_a_feature_mismatch_names_the_first_differing_feature(tmp_path):
    d = _critic(tmp_path)
    names = json.loads((d / "critic.json").read_text())["feature_names"]
    _rewrite_json(d, feature_names=["__import__", *names[1:]])
    crit = load_critic(d)
    with pytest.raises(KdataError) as exc:
        crit.score(_scores(NAMES))
    assert str(exc.value).startswith(f"{d}: feature mismatch: feature 0 is '__import__' in the critic but "
                                     "'teacher_conf' in these scores (fitted on 9 features, got 9)")
    with pytest.raises(KdataError, match="the critic has 9 features, these scores 8: the first missing is 'agree'"):
        load_critic(_critic(tmp_path, "c2")).score(_scores(list(STAT_FEATURES)))


def test_save_replaces_a_critic_whole_and_refuses_other_files(tmp_path):
    d = _critic(tmp_path)
    first = (d / "critic.npz").read_bytes()
    rng = np.random.default_rng(5)
    X = rng.normal(size=(60, len(NAMES)))
    other = fit_critic(X, X[:, 1] > 0, feature_names=NAMES, recall=0.5)
    other.save(d)
    assert (d / "critic.npz").read_bytes() != first
    assert load_critic(d).threshold == other.threshold and sorted(p.name for p in d.iterdir()) == [
        "critic.json", "critic.npz"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]  # no staging or replaced directory left
    (d / "notes.txt").write_text("mine")
    before = (d / "critic.json").read_bytes()
    with pytest.raises(KdataError, match="holds files other than a critic's"):
        other.with_target(recall=0.9).save(d)
    assert (d / "notes.txt").read_text() == "mine" and (d / "critic.json").read_bytes() == before
