"""Card fixes on a real causal-LM text run of the default recipe (MiniPLM, near dedup) without an
embedder: exact dedup ran
and near was skipped, ``topk`` is the per-token k, the labels note fits LM rows, and MiniPLM with the
student as its reference gets the student-coupling note."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("transformers")

from kdata.cli import main  # noqa: E402
from kdata.report.card_text import read_front_matter  # noqa: E402
from tests.helpers.text_models import text_assets  # noqa: E402


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    d = text_assets()
    out = tmp_path_factory.mktemp("textfix") / "out"
    assert main(["select", "--pool", str(d / "pool.jsonl"), "--teacher", f"hf:{d / 't'}", "--student",
                 f"hf:{d / 's'}", "--budget", "0.3", "--out", str(out),
                 "--device", "cpu", "--quiet"]) == 0
    return out


def _bias(card: str) -> str:
    return card.split("## Biases this selection can introduce")[1].split("\n## ")[0]


def test_the_card_says_near_dedup_was_skipped_and_exact_ran(text_run):
    card = (text_run / "README.md").read_text()
    m = json.loads((text_run / "manifest.json").read_text())
    assert m["dedup_level"] == "near" and m["method_info"]["dedup"]["near"].startswith("skipped:")
    assert read_front_matter(card)["kdata"]["dedup"]["method"] == "exact"
    assert "Remove duplicates (`exact`)" in card and "Remove duplicates (`near`" not in card
    assert "`near` was skipped — near dedup of text compares sentence embeddings" in card
    assert "**Deduplicated (`exact`).**" in _bias(card) and "Deduplicated (`near`)" not in card


def test_lm_card_topk_labels_and_student_coupling(text_run):
    card = (text_run / "README.md").read_text()
    m = json.loads((text_run / "manifest.json").read_text())
    assert m["method_info"]["miniplm"]["reference"].startswith("student")
    assert read_front_matter(card)["kdata"]["topk"] == m["scoring"]["token_topk"] == m["topk"]
    bias = _bias(card)
    assert "can disagree with the original `label`" not in bias and "next-token" in bias
    assert "**Student coupling.**" in bias


def test_lm_card_names_the_per_token_columns_and_the_pools_label(text_run):
    """The card said `label` was empty (the pool's labels are there) and listed the null class soft-label columns."""
    import pyarrow.dataset as pads

    card = (text_run / "README.md").read_text()
    shards = pads.dataset(str(text_run / "data"), format="parquet").to_table()
    load = card.split("## How to load", 1)[1]
    for col in ("input_ids", "teacher_topk_ids", "teacher_topk_logprobs", "teacher_rest_mass", "teacher_nll"):
        assert f"`{col}`" in load and col in shards.column_names
    assert "`teacher_topk_idx`" not in load and "(`label` and `teacher_pred` are empty)" not in card
    assert shards.column("label").null_count < shards.num_rows and "keeps the pool's label" in _bias(card)
