"""``kdata augment`` and ``kdata dedup`` check their source's rows as ``kdata train`` does
(``kdata.pipeline.source_shards``): shards rewritten with NaN or null soft labels, or a malformed
``kdata`` schema metadata entry, with their checksums recomputed, are one line naming the file, exit 2,
and no new dataset (they wrote a new, valid-looking dataset from them)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kdata.cli import main
from kdata.dataset.integrity import file_entry
from kdata.dataset.writer import MANIFEST


def _resealed(demo_run: Path, dest: Path, *, edit=None, metadata: bytes | None = None) -> Path:
    """A copy of the demo dataset whose shard is rewritten (``edit`` of its table, or its ``kdata``
    schema metadata replaced by ``metadata``) and whose manifest records the new shard's checksum and
    size, so the integrity checks pass."""
    shutil.copytree(demo_run, dest)
    manifest = json.loads((dest / MANIFEST).read_text())
    entry = manifest["files"][0]
    path = dest / entry["path"]
    table = pq.read_table(path)
    if edit is not None:
        table = edit(table)
    if metadata is not None:
        table = table.replace_schema_metadata({**table.schema.metadata, b"kdata": metadata})
    pq.write_table(table, path)
    manifest["files"][0] = file_entry(path, rel=entry["path"])
    (dest / MANIFEST).write_text(json.dumps(manifest))
    return dest


def _set_row(table: pa.Table, name: str, row: int, value) -> pa.Table:
    i = table.schema.get_field_index(name)
    values = table.column(name).to_pylist()
    values[row] = value(values[row])
    return table.set_column(i, table.schema.field(i), pa.array(values, table.schema.field(i).type))


BAD_ROWS = {
    "nan_prob": (lambda t: _set_row(t, "teacher_topk_prob", 3, lambda r: [float("nan")] * len(r)),
                 "column 'teacher_topk_prob' holds non-finite probabilities (row 3)"),
    "null_idx": (lambda t: _set_row(t, "teacher_topk_idx", 4, lambda r: None),
                 "column 'teacher_topk_idx' has nulls (row 4)"),
    "idx_oob": (lambda t: _set_row(t, "teacher_topk_idx", 5, lambda r: [12] + r[1:]),
                "column 'teacher_topk_idx' holds class indices outside [0, 10)"),
}


def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("kdata: error: ") and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("bad", sorted(BAD_ROWS))
def test_augment_and_dedup_refuse_soft_labels_train_refuses(demo_run, tmp_path, capsys, bad):
    edit, problem = BAD_ROWS[bad]
    src = _resealed(demo_run, tmp_path / "src", edit=edit)
    shard = src / json.loads((src / MANIFEST).read_text())["files"][0]["path"]
    assert main(["inspect", str(src), "--json"]) == 0  # the checksums match: only the rows tell
    capsys.readouterr()
    for command in (["augment", str(src), "--per-sample", "1", "--device", "cpu"],
                    ["dedup", str(src), "--level", "exact"]):
        out = tmp_path / f"out-{command[0]}"
        assert main([*command, "--out", str(out), "--quiet"]) == 2
        err = _one_line(capsys)
        assert f"{shard}: {problem}" in err, err
        assert not out.exists()
    assert main(["train", str(src), "--epochs", "1", "--device", "cpu", "--eval", "none",
                 "--out", str(tmp_path / "student"), "--quiet"]) == 2  # the same check, the same line
    assert problem in _one_line(capsys)


def test_the_untouched_dataset_still_derives(demo_run, tmp_path, capsys):
    src = _resealed(demo_run, tmp_path / "src")  # rewritten as it was: every check passes
    assert main(["dedup", str(src), "--level", "exact", "--out", str(tmp_path / "d"), "--quiet"]) == 0
    assert (tmp_path / "d" / MANIFEST).is_file()


@pytest.mark.parametrize("metadata,problem", [(b"{not json", "is not valid JSON"),
                                              (b"[1, 2]", "is not a JSON object")])
def test_malformed_shard_metadata_is_one_line_naming_the_shard(demo_run, tmp_path, capsys, metadata, problem):
    src = _resealed(demo_run, tmp_path / "src", metadata=metadata)
    shard = src / json.loads((src / MANIFEST).read_text())["files"][0]["path"]
    line = f"{shard}: schema metadata 'kdata' {problem}"
    assert main(["inspect", str(src), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert not report["integrity"]["ok"] and line in json.dumps(report["integrity"])
    for command in (["dedup", str(src), "--level", "exact"], ["augment", str(src), "--per-sample", "1"],
                    ["train", str(src), "--epochs", "1", "--device", "cpu", "--eval", "none"]):
        out = tmp_path / f"out-{command[0]}"
        assert main([*command, "--out", str(out), "--quiet"]) == 2
        assert line in _one_line(capsys)
        assert not (out / MANIFEST).exists() and not (out / "student.pt2").exists()


def test_a_text_dataset_with_a_damaged_lm_row_is_refused_by_dedup_and_train(tmp_path, capsys):
    """The same for causal-LM text shards: per-token soft labels checked as the text trainer reads them."""
    pytest.importorskip("transformers")
    from tests.helpers.text_models import random_text_dataset, text_assets

    d = text_assets()
    text = random_text_dataset(tmp_path / "text")

    def nan_logprob(t: pa.Table) -> pa.Table:
        return _set_row(t, "teacher_topk_logprobs", 2, lambda r: [[float("nan")] * len(p) for p in r])

    src = _resealed(text, tmp_path / "src", edit=nan_logprob)
    shard = src / json.loads((src / MANIFEST).read_text())["files"][0]["path"]
    line = f"{shard}: column 'teacher_topk_logprobs' holds non-finite or positive log-probabilities (row 2)"
    capsys.readouterr()
    assert main(["dedup", str(src), "--level", "exact", "--out", str(tmp_path / "d"), "--quiet"]) == 2
    assert line in _one_line(capsys)
    assert not (tmp_path / "d").exists()
    assert main(["train", str(src), "--student", f"hf:{d / 's'}", "--epochs", "1", "--device", "cpu", "--eval",
                 "none", "--out", str(tmp_path / "student"), "--quiet"]) == 2
    assert line in _one_line(capsys)
