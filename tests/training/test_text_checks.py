"""The soft labels of curated text shards are checked row group by row group as they are read
(``kdata.training.text_checks``): real shards written from a real teacher LM, one row damaged, are one
``KdataError`` line naming the file, the column and the file row — before any batch of that row group
is trained on — while the untouched shards (and their legitimately ragged edge rows) pass."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from kdata.core.errors import KdataError
from kdata.models.builtin_text import model_dir
from kdata.pools.builtin_text import text_web
from kdata.training.text_checks import check_text_shard
from kdata.training.text_data import TextShards
from tests.helpers.text_shards import write_classifier_shards, write_lm_shards

pytest.importorskip("transformers")

ROW = 20  # in the second row group (groups of 16): the reported row is the file's, not the group's


@pytest.fixture(scope="module")
def shard(tmp_path_factory) -> Path:
    pool = text_web(seed=0)
    texts = [t for t, s in zip(pool.column("text").to_pylist(), pool.column("source").to_pylist()) if s == "clean"]
    out = tmp_path_factory.mktemp("lm") / "curated"
    with torch.inference_mode():
        write_lm_shards(out, texts[:40], teacher_dir=model_dir("text-teacher"), max_length=24, files=1,
                        row_group_size=16)
    return next((out / "data").glob("*.parquet"))


def _damaged(shard: Path, dest: Path, edit, *, row: int = ROW) -> Path:
    table = pq.read_table(shard)
    rows = table.to_pylist()
    edit(rows[row])
    dest.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), dest / "a.parquet", row_group_size=16)
    return dest / "a.parquet"


def _set(name, value):
    def edit(r):
        r[name] = value(r[name])
    return edit


def _at(name, pos, i, value):
    def edit(r):
        r[name][pos][i] = value
    return edit


DAMAGE = {
    "null rest mass": (_set("teacher_rest_mass", lambda v: None), "column 'teacher_rest_mass' holds nulls"),
    "null inner log-prob": (_at("teacher_topk_logprobs", 1, 2, None), "column 'teacher_topk_logprobs' holds nulls"),
    "short top-k list": (_set("teacher_topk_ids", lambda v: [v[0][:3]] + v[1:]),
                         "column 'teacher_topk_ids' holds top-k lists of another length than 8"),
    "positions missing": (_set("teacher_topk_logprobs", lambda v: v[:-1]),
                          "column 'teacher_topk_logprobs' holds a different number of positions"),
    "NaN log-prob": (_at("teacher_topk_logprobs", 0, 0, math.nan),
                     "column 'teacher_topk_logprobs' holds non-finite or positive log-probabilities"),
    "-inf log-prob": (_at("teacher_topk_logprobs", 0, 5, -math.inf), "non-finite or positive"),
    "positive log-prob": (_at("teacher_topk_logprobs", 2, 1, 0.5), "non-finite or positive"),
    "not one softmax": (_set("teacher_topk_logprobs", lambda v: [[0.0] * len(p) for p in v]),
                        "holds top-k probabilities that sum to more than 1"),
    "rest mass above 1": (_set("teacher_rest_mass", lambda v: [1.5] + v[1:]),
                          "column 'teacher_rest_mass' holds values that are not finite or outside [0, 1]"),
    "negative token id": (_at("teacher_topk_ids", 1, 1, -4), "column 'teacher_topk_ids' holds token ids outside"),
    "negative input id": (_set("input_ids", lambda v: v[:2] + [-1] + v[3:]), "column 'input_ids' holds token ids"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_lm_row_is_one_line_naming_file_column_and_row(shard, tmp_path, damage):
    edit, problem = DAMAGE[damage]
    bad = _damaged(shard, tmp_path / "d" / "data", edit)
    data = TextShards(bad.parent, kind="causal_lm", batch_size=64)
    with pytest.raises(KdataError) as err:
        list(data.batches(epoch=0))
    line = str(err.value)
    assert line.startswith(f"{bad}: ") and problem in line and f"(row {ROW})" in line and "\n" not in line, line
    with pytest.raises(KdataError, match=f"row {ROW}"):  # the up-front check of dedup/augment says the same
        check_text_shard(bad, kind="causal_lm")


def test_the_untouched_shards_pass_and_batch(shard):
    check_text_shard(shard, kind="causal_lm")
    data = TextShards(shard.parent, kind="causal_lm", batch_size=16, vocab=512)
    assert sum(len(b["input_ids"]) for b in data.batches(epoch=0)) == 40


def test_ids_past_the_students_vocabulary_are_refused(shard):
    top = max(max(max(p) for p in r) for r in pq.read_table(shard).column("teacher_topk_ids").to_pylist())
    data = TextShards(shard.parent, kind="causal_lm", batch_size=64, vocab=top)  # one id too few
    with pytest.raises(KdataError, match=rf"holds token ids outside \[0, {top}\) \(the student's vocabulary\)"):
        list(data.batches(epoch=0))


def test_another_top_k_width_in_a_later_row_group_names_its_first_row(shard, tmp_path):
    table = pq.read_table(shard)
    rows = table.to_pylist()
    for r in rows[16:]:  # the second and third row groups store top-4 instead of top-8
        r["teacher_topk_ids"] = [p[:4] for p in r["teacher_topk_ids"]]
        r["teacher_topk_logprobs"] = [p[:4] for p in r["teacher_topk_logprobs"]]
    (tmp_path / "data").mkdir()
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), tmp_path / "data" / "a.parquet", row_group_size=16)
    with pytest.raises(KdataError, match=r"another length than 8 .* \(row 16 and"):
        check_text_shard(tmp_path / "data" / "a.parquet", kind="causal_lm")


@pytest.mark.parametrize("prob,problem", [([math.nan, 0.1], "holds non-finite probabilities (row 5)"),
                                          ([0.9, 0.8], "holds top-k probabilities that sum to more than 1")])
def test_a_damaged_classifier_row_gets_the_image_rows_checks(tmp_path, prob, problem):
    probs = [[0.7, 0.2, 0.1]] * 12
    out = write_classifier_shards(tmp_path / "c", [f"text {i}" for i in range(12)], [0] * 12, probs)
    path = next((out / "data").glob("*.parquet"))
    table = pq.read_table(path)
    values = table.column("teacher_topk_prob").to_pylist()
    values[5] = prob
    i = table.schema.get_field_index("teacher_topk_prob")
    pq.write_table(table.set_column(i, table.schema.field(i), pa.array(values, table.schema.field(i).type)), path)
    with pytest.raises(KdataError, match=re.escape(f"{path}: column 'teacher_topk_prob' {problem}")):
        list(TextShards(out, kind="classifier", batch_size=4).batches(epoch=0))


def test_a_short_first_list_blames_its_own_row(shard, tmp_path):
    """The width is what most positions hold, so a damaged row 0 is named, not the good rows after it."""
    bad = _damaged(shard, tmp_path / "d", _set("teacher_topk_ids", lambda v: [v[0][:3]] + v[1:]), row=0)
    with pytest.raises(KdataError, match=r"another length than 8 \(most rows'\) \(row 0\)"):
        check_text_shard(bad, kind="causal_lm")


def test_dedup_and_augment_hold_one_top_k_width_across_the_datasets_files(shard, tmp_path):
    """As the trainer reads them: a second file of top-4 beside a first of top-8 is refused up front."""
    from kdata.pipeline.source_shards import check_soft_labels

    table = pq.read_table(shard)
    rows = table.to_pylist()
    for r in rows:
        r["teacher_topk_ids"] = [p[:4] for p in r["teacher_topk_ids"]]
        r["teacher_topk_logprobs"] = [p[:4] for p in r["teacher_topk_logprobs"]]
    other = tmp_path / "b.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), other, row_group_size=16)
    assert check_soft_labels(other, num_classes=None) == 4  # alone, top-4 is fine
    k = check_soft_labels(shard, num_classes=None)  # check_source_shards carries it from file to file
    with pytest.raises(KdataError, match=re.escape(f"{other}: column 'teacher_topk_ids' holds top-k lists of "
                                                   "another length than 8 (the rows read before) (row 0")):
        check_soft_labels(other, num_classes=None, k=k)
