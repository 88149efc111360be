"""``kdata train``, ``kdata demo`` and ``kdata serve`` on bad input: one ``kdata: error:`` line naming the
file or option and the problem, exit 2, before any work — never a traceback, nothing written.

Real datasets written by ``kdata select`` (the session's ``demo_run``), damaged on disk
(``tests.training.tamper``)."""

from __future__ import annotations

import pytest

from tests.helpers.cli import kdata
from tests.training.tamper import copy_run, null_first, rewrite_shard, set_manifest


def one_error(code: int, out: str, err: str) -> str:
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("kdata: error: "), (code, err[-2000:])
    assert "Traceback" not in err and not out.strip()
    return lines[0]


@pytest.fixture
def run(demo_run, tmp_path):
    return copy_run(demo_run, tmp_path / "sel")


@pytest.mark.parametrize("flags,says", [
    (["--lr", "-1"], "--lr -1.0: must be a finite number > 0"),
    (["--lr", "nan"], "--lr nan: must be a finite number > 0"),
    (["--seed", "-1"], "--seed -1: must be a whole number from 0 to 2**64 - 1"),
    (["--workers", "-1"], "--workers -1: expected auto or a whole number ≥ 0"),
    (["--epochs", "0"], "--epochs 0: must be at least 1"),
    (["--steps", "0"], "--steps 0: must be at least 1"),
    (["--batch-size", "0"], "--batch-size 0: must be at least 1"),
    (["--alpha", "1.5"], "--alpha 1.5: must be within [0, 1]"),
    (["--temperature", "0"], "--temperature 0.0: must be a finite number > 0"),
    (["--temperature", "inf"], "--temperature inf: must be a finite number > 0"),
    (["--reselect-every", "-1"], "--reselect-every -1: must be at least 0"),
    (["--device", "bogus"], "--device 'bogus': unknown device"),
])
def test_each_bad_train_option_is_one_line_before_the_dataset_is_read(run, tmp_path, flags, says):
    set_manifest(run, lambda m: m.__setitem__("files", "oops"))  # the option must be what is reported
    line = one_error(*kdata("train", run, "--out", tmp_path / "st", *flags))
    assert says in line
    assert not (tmp_path / "st").exists()


@pytest.mark.parametrize("field,value,says", [
    ("files", "oops", "'files' must be a list of file entries"),
    ("models", "x", "'models' must be an object (or null), not str"),
])
@pytest.mark.parametrize("verify", [[], ["--no-verify"]])
def test_a_damaged_manifest_is_one_line_naming_it(run, tmp_path, field, value, says, verify):
    set_manifest(run, lambda m: m.__setitem__(field, value))
    line = one_error(*kdata("train", run, "--out", tmp_path / "st", "--epochs", "1", *verify))
    assert f"{run / 'manifest.json'}: {says}" in line
    assert ("integrity check failed" in line) == (not verify)
    assert not (tmp_path / "st").exists()


@pytest.mark.parametrize("verify", [[], ["--no-verify"]])
def test_a_shard_outside_the_dataset_is_refused_before_it_is_opened(run, tmp_path, verify):
    outside = tmp_path / "outside.txt"
    outside.write_text("root:x:0:0\n")  # the reviewer's /etc/passwd: opening it says "cannot read Parquet"
    set_manifest(run, lambda m: m["files"][0].update(path=str(outside)))
    line = one_error(*kdata("train", run, "--out", tmp_path / "st", "--epochs", "1", *verify))
    assert f"shard path '{outside}' points outside the dataset" in line and "cannot read Parquet" not in line


def test_null_soft_labels_are_one_line_naming_the_shard(run, tmp_path):
    shard = rewrite_shard(run, lambda t: null_first(t, "teacher_topk_idx"))  # checksums recomputed
    line = one_error(*kdata("train", run, "--out", tmp_path / "st", "--epochs", "1", "--device", "cpu"))
    assert line == f"kdata: error: {shard}: column 'teacher_topk_idx' has nulls (row 0): not a curated shard kdata can train on"


def test_shards_without_images_name_the_shard_and_what_it_lacks(run, tmp_path):
    shard = rewrite_shard(run, lambda t: t.drop_columns(["image"]))
    line = one_error(*kdata("train", run, "--out", tmp_path / "st", "--epochs", "1"))
    assert line.startswith(f"kdata: error: {shard}: no 'image' column") and "not a text model spec" not in line


def test_text_shards_with_an_image_student_name_the_shard(run, tmp_path):
    def as_text(t):
        import pyarrow as pa

        i = t.schema.get_field_index("text")
        t = t.set_column(i, t.schema.field(i), pa.array([f"row {n}" for n in range(t.num_rows)], pa.string()))
        return t.drop_columns(["image"])

    shard = rewrite_shard(run, as_text)
    line = one_error(*kdata("train", run, "--out", tmp_path / "st", "--student", "builtin:digits-student"))
    assert line.startswith(f"kdata: error: {shard}: classifier text shards (text, no images), but "
                           "builtin:digits-student is an image student")


def test_demo_checks_the_training_options_before_writing_the_dataset(tmp_path):
    for text in ([], ["--text"]):
        line = one_error(*kdata("demo", "--out", tmp_path / "o7", "--seed", "-1", "--epochs", "1", "--budget", "50",
                                *text))
        assert "--seed -1: must be a whole number from 0" in line
        assert not (tmp_path / "o7").exists()


def test_serve_checks_its_config_before_any_warning(tmp_path, monkeypatch):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.yaml").write_text("a: [\n")
    assert one_error(*kdata("serve", "--config", "bad.yaml")).startswith("kdata: error: bad.yaml: not valid YAML")
    (tmp_path / "w.yaml").write_text("pool: pool.parquet\nbudget: 20\nworkers: -3\n")
    line = one_error(*kdata("serve", "--config", "w.yaml"))
    assert line == "kdata: error: w.yaml: --workers -3: expected auto or a whole number ≥ 0"
    assert one_error(*kdata("serve", "--config", "none.yaml")) == "kdata: error: none.yaml: config file not found"
