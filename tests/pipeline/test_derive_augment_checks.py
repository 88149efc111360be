"""``kdata augment``'s checks before any generation: the dataset's own teacher (by checksum), an image
dataset, an image critic fitted with these models, no ``--critic-threshold`` beside ``--critic``, OUT
outside the dataset; and a critic refitted in place makes a rerun another run, never "already
complete". Real built-in digits models, real curated datasets, real critics."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from kdata.cli import main
from kdata.pipeline.config import RunOptions, SelectConfig
from kdata.pipeline.run import run_select


@pytest.fixture(scope="module")
def base(tmp_path_factory, builtin_models) -> Path:
    out = tmp_path_factory.mktemp("aug-checks") / "base"
    run_select(SelectConfig(method="kd3", budget="20"), out=str(out), opts=RunOptions(device="cpu"))
    return out


def _augment(base, out, *extra) -> int:
    return main(["augment", str(base), "--per-sample", "1", "--steps", "1", "--out", str(out), "--device", "cpu",
                 "--quiet", "--json", *extra])


def _one_error(capsys, *parts) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("kdata: error: "), err
    for p in parts:
        assert p in err, err
    return err


def test_a_teacher_other_than_the_datasets_is_refused(base, tmp_path, capsys):
    out = tmp_path / "o"
    rc = _augment(base, out, "--teacher", "builtin:digits-student", "--student", "builtin:digits-teacher")
    assert rc == 2 and not out.exists()
    _one_error(capsys, "--teacher builtin:digits-student: its checksum sha256:",
               f"differs from the teacher whose soft labels {base} holds (builtin:digits-teacher, sha256:")


def test_a_text_critic_is_refused_before_any_model_loads(base, tmp_path, capsys):
    from kdata.selection.critic_model import fit_critic
    from kdata.selection.critic_text import TEXT_STATS

    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, len(TEXT_STATS) + 1))
    crit = fit_critic(X, X[:, 0] > 0, feature_names=[*TEXT_STATS, "nll_gap"], recall=0.8)
    crit.text = {"kind": "text", "teacher": "builtin:text-teacher", "student": "builtin:text-student"}
    crit.save(tmp_path / "textcritic")
    out = tmp_path / "o"
    # a teacher that cannot load: the critic is refused first, so no model was loaded, nothing generated
    rc = _augment(base, out, "--critic", str(tmp_path / "textcritic"), "--teacher", str(tmp_path / "none.pt2"))
    assert rc == 2 and not out.exists()
    _one_error(capsys, f"{tmp_path / 'textcritic'}: a text critic", "needs an image critic")


def test_critic_threshold_beside_a_fitted_critic_is_refused(base, image_critic, tmp_path, capsys):
    rc = _augment(base, tmp_path / "o", "--critic", str(image_critic), "--critic-threshold", "0.9")
    assert rc == 2 and not (tmp_path / "o").exists()
    _one_error(capsys, "--critic-threshold 0.9: the default critic's cut", "re-choose it with --critic-recall")


def test_a_text_dataset_says_hard_needs_images(tmp_path, capsys):
    pytest.importorskip("transformers")
    from tests.helpers.text_models import random_text_dataset

    text = random_text_dataset(tmp_path / "text")
    capsys.readouterr()
    assert _augment(text, tmp_path / "o") == 2 and not (tmp_path / "o").exists()
    _one_error(capsys, f"{text}: holds text; kdata augment generates HARD image augmentations and needs an image "
                       "dataset")


def test_out_inside_the_dataset_is_refused_and_nothing_lands_there(base, capsys):
    before = sorted(p.name for p in base.iterdir())
    assert _augment(base, base / "aug") == 2
    _one_error(capsys, f"{base / 'aug'}: --out lies inside the dataset {base}")
    assert sorted(p.name for p in base.iterdir()) == before  # not even a lock file
    assert main(["dedup", str(base), "--level", "exact", "--out", str(base / "data" / "d")]) == 2
    _one_error(capsys, "--out lies inside the dataset")
    assert sorted(p.name for p in base.iterdir()) == before


def _fit_image_critic(out: Path, *, invert: bool) -> None:
    from kdata.pools.spec import open_pool

    t = open_pool("builtin:digits-web").read_all()
    labels = out.parent / f"labels-{invert}.csv"
    with labels.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["sample_id", "accept"])
        for sid, lab in list(zip(t.column("sample_id").to_pylist(), t.column("label").to_pylist()))[:200]:
            w.writerow([sid, int((lab in ("0", "1", "2", "3", "4")) != invert)])
    assert main(["critic", "fit", "--scores-from", "builtin:digits-web", "--labels", str(labels), "--out", str(out),
                 "--device", "cpu", "--json", "--overwrite"]) == 0  # a refit in place replaces the critic


@pytest.fixture(scope="module")
def image_critic(tmp_path_factory, builtin_models) -> Path:
    """An image critic fitted by ``kdata critic fit`` on builtin:digits-web (accept: the web label is 0–4)."""
    crit = tmp_path_factory.mktemp("aug-critic") / "critic"
    _fit_image_critic(crit, invert=False)
    return crit


def test_a_critic_refitted_in_place_is_another_run_and_its_models_are_checked(base, image_critic, tmp_path, capsys):
    crit, out = tmp_path / "critic", tmp_path / "aug"
    shutil.copytree(image_critic, crit)
    capsys.readouterr()
    assert _augment(base, out, "--critic", str(crit)) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["status"] == "written"
    assert _augment(base, out, "--critic", str(crit)) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "already complete"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["critic_sha256"].startswith("sha256:")
    _fit_image_critic(crit, invert=True)  # other labels, same directory
    capsys.readouterr()
    assert _augment(base, out, "--critic", str(crit)) == 2
    _one_error(capsys, f"{out}: --out already holds a different run")
    # the critic's statistics come from the student it was fitted with, not another one
    assert _augment(base, tmp_path / "o2", "--critic", str(crit), "--student", "builtin:digits-teacher") == 2
    _one_error(capsys, f"{crit}: the critic was fitted on the statistics of student builtin:digits-student")
