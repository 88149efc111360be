"""Bad critic input through the CLI: a damaged critic is one line naming its file and the field, exit 2,
before any scoring, in every command that takes one (``critic apply``, ``select --critic``, ``augment
--critic``, ``generate --critic``); ``critic fit`` checks ``--out`` before scoring (a file, a foreign
directory, a critic fitted otherwise are refused; the same fit is replaced whole) and refuses
``--embedder`` on image scores. Real files, real built-in models."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kdata.cli import main
from kdata.selection.critic_model import STAT_FEATURES, fit_critic


def _good_critic(d: Path, names=(*STAT_FEATURES, "agree")) -> Path:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, len(names)))
    return fit_critic(X, X[:, 0] > 0, feature_names=list(names), recall=0.8).save(d)


def _npz(d: Path, **changes) -> None:
    with np.load(d / "critic.npz", allow_pickle=False) as z:
        a = {**{k: z[k] for k in z.files}, **changes}
    np.savez(d / "critic.npz", **{k: v for k, v in a.items() if v is not None})


def _json(d: Path, **changes) -> None:
    meta = json.loads((d / "critic.json").read_text())
    (d / "critic.json").write_text(json.dumps({**meta, **changes}))


DAMAGE = {  # name: (damage, the file named, the field or problem named)
    "truncated": (lambda d: (d / "critic.npz").write_bytes((d / "critic.npz").read_bytes()[:200]), "critic.npz",
                  "not a readable .npz archive"),
    "no_intercept": (lambda d: _npz(d, intercept=None), "critic.npz", "'intercept'"),
    "nan_coef": (lambda d: _npz(d, coef=np.full(9, np.nan)), "critic.npz", "'coef' holds 9 non-finite"),
    "scale_zero": (lambda d: _npz(d, scale=np.zeros(9)), "critic.npz", "'scale' must be > 0"),
    "threshold_str": (lambda d: _json(d, threshold="x"), "critic.json", "'threshold'"),
    "threshold_nan": (lambda d: _json(d, threshold=float("nan")), "critic.json", "'threshold'"),
    "json_list": (lambda d: (d / "critic.json").write_text("[]"), "critic.json", "expected a JSON object"),
}


def _damaged(tmp_path: Path, kind: str, names=(*STAT_FEATURES, "agree")) -> tuple[Path, str]:
    d = _good_critic(tmp_path / f"crit-{kind}", names)
    damage, file, part = DAMAGE[kind]
    damage(d)
    return d, f"kdata: error: {d / file}: "


def _one_line(capsys, prefix: str, part: str) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(prefix) and part in err, err
    return err


def _fresh_cache(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "fresh-cache"
    monkeypatch.setenv("KDATA_CACHE", str(cache))
    return cache


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_critic_apply_refuses_a_damaged_critic_before_any_scoring(tmp_path, monkeypatch, capsys, kind):
    d, prefix = _damaged(tmp_path, kind)
    cache = _fresh_cache(tmp_path, monkeypatch)
    out = tmp_path / "applied.csv"
    rc = main(["critic", "apply", str(d), "--scores-from", "builtin:digits-web", "--out", str(out), "--device", "cpu"])
    assert rc == 2 and not out.exists()
    _one_line(capsys, prefix, DAMAGE[kind][2])
    assert not cache.exists()  # nothing scored, no pool materialised, no model trained


def test_the_console_entry_point_prints_no_traceback(tmp_path):
    d, prefix = _damaged(tmp_path, "truncated")
    p = subprocess.run([sys.executable, "-m", "kdata.cli", "critic", "apply", str(d), "--scores-from",
                        "builtin:digits-web", "--out", str(tmp_path / "a.csv")], capture_output=True, text=True,
                       env={**os.environ, "KDATA_CACHE": str(tmp_path / "cache")}, timeout=300)
    assert p.returncode == 2 and p.stderr.startswith(prefix) and p.stderr.count("\n") == 1, p.stderr
    assert "Traceback" not in p.stderr and "BadZipFile: File is not a zip file" in p.stderr


@pytest.fixture(scope="module")
def small_pool(tmp_path_factory) -> Path:
    """30 image rows of the built-in pool as a Parquet pool of their own."""
    from kdata.pools.spec import open_pool

    unit = open_pool("builtin:digits-web").units[0]
    ids = unit.sample_ids().to_pylist()[:30]
    t = unit.take_ids(set(ids)).select(["sample_id", "image", "label", "source", "domain"])
    path = tmp_path_factory.mktemp("pool") / "pool.parquet"
    pq.write_table(t, path)
    return path


@pytest.mark.parametrize("kind", ["nan_coef", "threshold_str", "truncated"])
def test_select_with_a_damaged_critic_writes_nothing(tmp_path, capsys, builtin_models, small_pool, kind):
    d, prefix = _damaged(tmp_path, kind)
    out = tmp_path / "sel"
    rc = main(["select", "--pool", str(small_pool), "--method", "critic,kd3", "--critic", str(d), "--budget", "10",
               "--out", str(out), "--device", "cpu", "--quiet"])
    assert rc == 2 and not out.exists()
    _one_line(capsys, prefix, DAMAGE[kind][2])


def test_augment_with_a_damaged_critic_is_refused_before_any_model_loads(tmp_path, capsys, builtin_models,
                                                                           small_pool):
    base = tmp_path / "base"
    assert main(["select", "--pool", str(small_pool), "--method", "kd3", "--budget", "10", "--out", str(base),
                 "--device", "cpu", "--quiet"]) == 0
    d, prefix = _damaged(tmp_path, "scale_zero")
    capsys.readouterr()
    out = tmp_path / "aug"
    # a teacher that cannot load: the critic is refused first, so no model loaded and nothing generated
    rc = main(["augment", str(base), "--per-sample", "1", "--steps", "1", "--critic", str(d), "--teacher",
               str(tmp_path / "none.pt2"), "--out", str(out), "--device", "cpu", "--quiet"])
    assert rc == 2 and not out.exists()
    _one_line(capsys, prefix, "'scale' must be > 0")


def test_generate_with_a_damaged_critic_is_refused_before_any_model_loads(tmp_path, monkeypatch, capsys):
    from kdata.selection.critic_text import TEXT_STATS

    d, prefix = _damaged(tmp_path, "no_intercept", names=(*TEXT_STATS, "nll_gap"))
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"id": "p0", "prompt": "Once"}\n')
    cache = _fresh_cache(tmp_path, monkeypatch)
    out = tmp_path / "gen"
    rc = main(["generate", "--prompts", str(prompts), "--critic", str(d), "--student", "builtin:text-student",
               "--out", str(out), "--device", "cpu"])
    assert rc == 2 and not out.exists()
    _one_line(capsys, prefix, "'intercept'")
    assert not cache.exists() or not any(cache.rglob("*.pt*"))  # no model built or loaded


# ---- critic fit: --out and --embedder, checked before any scoring ----

def _labels(tmp_path: Path, n: int = 12) -> Path:
    from kdata.pools.spec import open_pool

    lab = tmp_path / "labels.csv"
    if lab.exists():  # written before the cache was swapped for an empty one
        return lab
    ids = open_pool("builtin:digits-web").units[0].sample_ids().to_pylist()[:n]
    lab.write_text("sample_id,accept\n" + "".join(f"{i},{k % 2}\n" for k, i in enumerate(ids)))
    return lab


def _fit_fresh(tmp_path, monkeypatch, capsys, *extra) -> tuple[int, str]:
    """``critic fit`` on builtin:digits-web under an empty cache: (exit code, stderr); the cache stays empty
    when it fails before any work."""
    lab = _labels(tmp_path)
    cache = _fresh_cache(tmp_path, monkeypatch)
    capsys.readouterr()
    rc = main(["critic", "fit", "--scores-from", "builtin:digits-web", "--labels", str(lab), "--device", "cpu",
               *extra])
    if rc == 2:
        assert not cache.exists(), list(cache.rglob("*"))
    return rc, capsys.readouterr().err


def test_fit_refuses_an_out_that_is_a_file(tmp_path, monkeypatch, capsys):
    f = tmp_path / "afile"
    f.write_text("keep")
    rc, err = _fit_fresh(tmp_path, monkeypatch, capsys, "--out", str(f))
    assert rc == 2 and err == f"kdata: error: {f}: --out exists and is not a directory (a critic is a directory " \
                              "of critic.json and critic.npz); name a new directory\n"
    assert f.read_text() == "keep"


def test_fit_refuses_a_non_empty_directory_that_holds_no_critic(tmp_path, monkeypatch, capsys):
    d = tmp_path / "unrelated"
    d.mkdir()
    (d / "notes.txt").write_text("mine")
    rc, err = _fit_fresh(tmp_path, monkeypatch, capsys, "--out", str(d))
    assert rc == 2 and err == f"kdata: error: {d}: --out is not empty and holds no critic; choose another directory\n"
    assert [p.name for p in d.iterdir()] == ["notes.txt"]


def test_fit_refuses_a_critic_fitted_otherwise_and_one_beside_other_files(tmp_path, monkeypatch, capsys):
    d = _good_critic(tmp_path / "old")  # fitted by the library: no record of how
    before = {p.name: p.read_bytes() for p in d.iterdir()}
    rc, err = _fit_fresh(tmp_path, monkeypatch, capsys, "--out", str(d))
    assert rc == 2 and err.count("\n") == 1 and f"{d}: --out already holds a critic" in err
    assert {p.name: p.read_bytes() for p in d.iterdir()} == before
    (d / "notes.txt").write_text("mine")
    rc, err = _fit_fresh(tmp_path, monkeypatch, capsys, "--out", str(d), "--overwrite")  # never over other files
    assert rc == 2 and f"{d}: --out holds a critic and other files ('notes.txt')" in err and (d / "notes.txt").exists()
    assert {p.name: p.read_bytes() for p in d.iterdir() if p.name != "notes.txt"} == before


def test_fit_refuses_an_embedder_for_image_scores(tmp_path, monkeypatch, capsys):
    out = tmp_path / "c"
    rc, err = _fit_fresh(tmp_path, monkeypatch, capsys, "--embedder", "hf:/x", "--out", str(out))
    assert rc == 2 and err.startswith("kdata: error: --embedder hf:/x: sentence embeddings are features of a text "
                                      "critic") and err.count("\n") == 1
    assert not out.exists()


def _scores_file(tmp_path: Path, n: int = 40) -> tuple[Path, Path]:
    """A kdata-like scores Parquet (the statistics columns) and labels that follow its first statistic."""
    rng = np.random.default_rng(3)
    cols = {c: rng.normal(size=n) for c in STAT_FEATURES}
    ids = [f"s{i}" for i in range(n)]
    path = tmp_path / "scores.parquet"
    pq.write_table(pa.table({"sample_id": ids, **cols}), path)
    lab = tmp_path / "scores-labels.csv"
    lab.write_text("sample_id,accept\n" + "".join(f"{s},{int(v > 0)}\n" for s, v in zip(ids, cols["teacher_conf"])))
    return path, lab


def test_the_same_fit_replaces_its_critic_and_another_fit_is_refused(tmp_path, capsys):
    scores, lab = _scores_file(tmp_path)
    out = tmp_path / "critic"
    argv = ["critic", "fit", "--scores-from", str(scores), "--labels", str(lab), "--out", str(out), "--json"]
    assert main(argv) == 0
    fit = json.loads((out / "critic.json").read_text())["fit"]
    assert fit.startswith("sha256:")
    (out / "critic.npz").write_bytes((out / "critic.npz").read_bytes())  # same content, new inode below
    inode = (out / "critic.npz").stat().st_ino
    assert main(argv) == 0  # a rerun of the same fit: written again, whole
    assert json.loads((out / "critic.json").read_text())["fit"] == fit
    assert (out / "critic.npz").stat().st_ino != inode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["critic", "scores-labels.csv", "scores.parquet"]
    capsys.readouterr()
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert main([*argv, "--recall", "0.5"]) == 2
    err = capsys.readouterr().err
    assert err == (f"kdata: error: {out}: --out already holds a critic (one fitted with other labels, scores or "
                   "options); choose another directory, or replace it with --overwrite\n")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert main([*argv, "--recall", "0.5", "--overwrite"]) == 0  # as kdata train's --overwrite
    meta = json.loads((out / "critic.json").read_text())
    assert meta["target"] == {"recall": 0.5} and meta["fit"] != fit


@pytest.mark.parametrize("command", [["fit", "--scores-from", "builtin:digits-web", "--labels", "l.csv"],
                                     ["apply", "crit", "--scores-from", "builtin:digits-web"]])
def test_a_forward_precision_given_as_the_cut_precision_names_the_right_flag(tmp_path, capsys, command):
    """``--precision`` means the forward pass to select and generate; to critic it is the cut's target."""
    with pytest.raises(SystemExit) as exc:
        main(["critic", *command, "--out", str(tmp_path / "o"), "--precision", "bf16"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "give --model-precision bf16" in err and err.count("\n") == 1, err
