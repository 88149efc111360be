"""A ``save_to_disk`` text pool's JSON files cannot make kdata read outside the pool: ``state.json``
data file names and ``dataset_dict.json`` split names that escape it (``..``, absolute, ``.``, a
symlink leaving it) are one line naming the JSON file and the entry, exit 2, before any scoring.
Datasets are real ones written by ``datasets``, then edited as a hostile sender would."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

datasets = pytest.importorskip("datasets")

from kdata.core.errors import KdataError  # noqa: E402
from kdata.pools.base import PoolLimits  # noqa: E402
from kdata.pools.spec import open_pool  # noqa: E402

SECRET = [f"SECRET-{i} api_key=sk-{i:04d}" for i in range(8)]
HARMLESS = [f"harmless text number {i}" for i in range(8)]


def _save(path: Path, texts: list[str]) -> Path:
    datasets.Dataset.from_dict({"text": texts}).save_to_disk(str(path))
    return path


def _arrow(d: Path) -> Path:
    (f,) = sorted(d.glob("*.arrow"))
    return f


def _set_files(d: Path, names: list[str]) -> Path:
    """Point ``d/state.json`` at ``names`` and remove the dataset's own Arrow files."""
    state = d / "state.json"
    st = json.loads(state.read_text())
    st["_data_files"] = [{"filename": n} for n in names]
    state.write_text(json.dumps(st))
    for f in d.glob("*.arrow"):
        f.unlink()
    return state


def _texts(spec: str, **kw) -> list[str]:
    return open_pool(spec, **kw).read_all().column("text").to_pylist()


def _refused(spec: Path, json_file: Path, entry: str, words: str, **kw) -> str:
    with pytest.raises(KdataError) as e:
        _texts(str(spec), **kw)
    msg = str(e.value)
    assert msg.startswith(f"{json_file}: ") and repr(entry) in msg and words in msg and "\n" not in msg, msg
    assert "SECRET" not in msg
    return msg


@pytest.fixture
def secret(tmp_path) -> Path:
    return _arrow(_save(tmp_path / "secret", SECRET))


def test_normal_saved_dataset_and_dataset_dict_split_still_read(tmp_path):
    assert _texts(str(_save(tmp_path / "one", HARMLESS))) == HARMLESS
    ds = datasets.Dataset.from_dict({"text": HARMLESS})
    datasets.DatasetDict({"train": ds, "test": ds.select([0, 1])}).save_to_disk(str(tmp_path / "two"))
    assert _texts(str(tmp_path / "two" / "train")) == HARMLESS  # the root: test_text_hf_dataset_dict.py


def test_dotdot_data_file_outside_the_pool_is_refused(tmp_path, secret):
    pool = _save(tmp_path / "pool", HARMLESS)
    name = f"../secret/{secret.name}"
    state = _set_files(pool, [name])
    _refused(pool, state, name, "not a plain relative name")
    # '..' that would stay inside is not a plain name either
    sub = _set_files(_save(tmp_path / "p2", HARMLESS), [f"x/../{secret.name}"])
    _refused(tmp_path / "p2", sub, f"x/../{secret.name}", "not a plain relative name")


def test_absolute_data_file_is_refused(tmp_path, secret):
    pool = _save(tmp_path / "pool", HARMLESS)
    state = _set_files(pool, [str(secret)])
    _refused(pool, state, str(secret), "not a plain relative name")


def test_symlinked_data_file_leaving_the_pool_is_refused_unless_following(tmp_path, secret):
    pool = _save(tmp_path / "pool", HARMLESS)
    arrow = _arrow(pool)
    arrow.unlink()
    os.symlink(secret, arrow)
    msg = _refused(pool, pool / "state.json", arrow.name, "outside the pool (--follow-symlinks reads it)")
    assert str(secret) in msg
    assert _texts(str(pool), limits=PoolLimits(follow_symlinks=True)) == SECRET  # as for other pool files
    # a link that stays inside the pool is read
    os.unlink(arrow)
    (pool / "inner").mkdir()
    inner = _arrow(_save(tmp_path / "tmp", HARMLESS)).rename(pool / "inner" / "real.arrow")
    os.symlink(inner, arrow)
    assert _texts(str(pool)) == HARMLESS


def test_data_file_through_a_symlinked_directory_leaving_the_pool_is_refused(tmp_path, secret):
    pool = _save(tmp_path / "pool", HARMLESS)
    os.symlink(secret.parent, pool / "sub")
    name = f"sub/{secret.name}"
    state = _set_files(pool, [name])
    _refused(pool, state, name, "outside the pool")


def test_data_file_that_is_not_a_regular_file_is_refused(tmp_path):
    pool = _save(tmp_path / "pool", HARMLESS)
    state = _set_files(pool, ["adir.arrow"])
    (pool / "adir.arrow").mkdir()
    _refused(pool, state, "adir.arrow", "a directory, not a regular file")


def _dataset_dict(tmp_path: Path, splits) -> tuple[Path, Path]:
    d = tmp_path / "dd"
    ds = datasets.Dataset.from_dict({"text": HARMLESS})
    datasets.DatasetDict({"train": ds}).save_to_disk(str(d))
    index = d / "dataset_dict.json"
    index.write_text(json.dumps({"splits": splits}))
    return d, index


@pytest.mark.parametrize("split,words", [(".", "not a plain directory name"),
                                         ("..", "not a plain directory name"),
                                         ("../x", "not a plain directory name"),
                                         ("train/..", "not a plain directory name"),
                                         ("", "not a plain directory name"),
                                         ("nosuch", "no such subdirectory")])
def test_split_names_that_are_not_one_subdirectory_are_refused(tmp_path, split, words):
    d, index = _dataset_dict(tmp_path, ["train", split])
    _save(tmp_path / "x", SECRET)  # what "../x" would reach
    _refused(d, index, split, words)


def test_absolute_and_symlinked_splits_are_refused(tmp_path, secret):
    d, index = _dataset_dict(tmp_path, [str(secret.parent)])
    _refused(d, index, str(secret.parent), "not a plain directory name")
    os.symlink(secret.parent, d / "evil")
    index.write_text(json.dumps({"splits": ["evil"]}))
    _refused(d, index, "evil", "outside the pool")
    os.symlink(".", d / "loop")
    index.write_text(json.dumps({"splits": ["loop"]}))
    _refused(d, index, "loop", "leads back to the pool directory itself")


def test_cli_escape_is_one_line_exit_2_before_scoring(tmp_path, secret, capsys):
    pytest.importorskip("transformers")
    from kdata.cli import main
    from tests.helpers.text_models import text_assets

    m = text_assets()
    pool = _save(tmp_path / "pool", HARMLESS)
    name = f"../secret/{secret.name}"
    state = _set_files(pool, [name])
    out = tmp_path / "out"
    capsys.readouterr()  # the progress bars of building the models and datasets
    rc = main(["select", "--pool", str(pool), "--teacher", f"hf:{m / 't'}", "--student", f"hf:{m / 's'}",
               "--method", "default", "--budget", "0.5", "--out", str(out), "--quiet", "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert err.startswith(f"kdata: error: {state}: data file {name!r}") and "SECRET" not in err
    assert not out.exists()
