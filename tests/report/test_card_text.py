"""The card's text on its own: plain front matter from any manifest values, sections in a fixed order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from kdata.report.card_text import SECTIONS, front_matter, md_table, read_front_matter, render_card
from kdata.report.inspect import Run


def _run() -> Run:
    manifest = {"config": {"budget": "0.3", "pool": "builtin:x", "dedup": "near", "dedup_threshold": np.float32(0.9)},
                "counts": {"kept": np.int64(3), "n_in": 5, "rejected": 2, "quarantined": 0},
                "method_info": {"kd3": {"weight": np.float32(0.5), "span": (1, 2)}}, "methods": ("kd3",),
                "files": [{"path": "data/train-00000-of-00001.parquet", "rows": np.int64(3), "sha256": "a" * 64}]}
    return Run(out=Path("."), manifest=manifest, decisions=None, shards=None)


def test_front_matter_is_plain_yaml_even_from_numpy_values():
    fm = front_matter(_run(), name="tiny")
    assert fm["kdata"]["method_info"] == {"kd3": {"weight": 0.5, "span": [1, 2]}}
    assert type(fm["kdata"]["files"][0]["rows"]) is int and fm["size_categories"] == ["n<1K"]
    text = yaml.safe_dump(fm, sort_keys=False, allow_unicode=True)
    assert yaml.safe_load(text) == fm and "numpy" not in text


def test_render_card_has_every_section_once_in_order_and_parses_back():
    text = render_card(_run(), name="tiny", plots={"scores": None, "balance": None, "thumbnails": None})
    assert read_front_matter(text) == front_matter(_run(), name="tiny")
    heads = [line for line in text.splitlines() if line.startswith("## ")]
    assert heads == ["## Summary", "## Sources", "## Curation recipe", "## Counts at each stage",
                     "## Class balance before and after", "## Score distributions", "## Examples",
                     "## Biases this selection can introduce", "## Intended and out-of-scope uses",
                     "## How to load", "## Files"]
    assert len(SECTIONS) == len(heads) + 1  # the front matter and title come first
    assert "Remove duplicates (`near`, threshold 0.900" in text and "![" not in text
    assert text.endswith("Regenerate this card with `kdata card DIR`.\n")


def test_md_table_formats_cells():
    assert md_table(["a", "b"], [[None, 0.12345], [3, "x"]]) == ["| a | b |", "|---|---|", "| – | 0.123 |",
                                                                  "| 3 | x |"]


def _section(text: str, head: str) -> str:
    return text.split(head)[1].split("\n## ")[0]


def _bias_text(methods, **extra) -> str:
    run = _run()
    run.manifest.update({"methods": list(methods), **extra})
    text = render_card(run, name="tiny", plots={})
    return _section(text, "## Biases this selection can introduce")


def test_front_matter_is_written_and_read_by_huggingface_hub():
    from huggingface_hub import DatasetCard, DatasetCardData

    text = render_card(_run(), name="tiny", plots={})
    card = DatasetCard(text)
    assert isinstance(card.data, DatasetCardData)
    assert card.data.pretty_name == "tiny (kdata-curated distillation set)"
    assert card.data.to_dict() == front_matter(_run(), name="tiny") == read_front_matter(text)
    assert str(card) == text  # huggingface_hub writes back the same bytes


def test_biases_are_about_the_methods_that_ran():
    from kdata.report.card_biases import METHOD_BIASES
    from kdata.selection.methods import available

    assert set(available()) <= set(METHOD_BIASES)  # every registered method has its note
    rad = _bias_text(["rad"], method_info={"rad": {"teacher_error": 0.25, "mistakes": 12.0}})
    assert "RAD keeps what the student finds confusing" in rad and "0.250" in rad and "about 12 of the rows" in rad
    assert "KD³" not in rad and "critic" not in rad.lower()
    kd3 = _bias_text(["kd3"])
    assert "KD³ prefers prototypical rows" in kd3 and "RAD" not in kd3
    chain = _bias_text(["critic", "kd3"], config={"critic_recall": 0.8, "budget": "0.3"})
    assert chain.index("critic keeps what its labellers accepted") < chain.index("KD³ prefers")
    assert "recall target (0.800)" in chain
    assert "Student coupling" in kd3 and "Student coupling" not in _bias_text(["random"])
    assert "no bias note is recorded" in _bias_text(["my_plugin"])
    cov = _bias_text(["coverage"], method_info={"coverage": {"tail_cut": 659, "label_cut": 467, "ood_cut": 192,
                                                             "label_noise": 0.376}})
    assert "659 candidates were cut: 467 for the teacher's disagreement with their label" in cov
    assert "estimated label noise 0.376" in cov and "192 of the rest" in cov
    unlabelled = _bias_text(["coverage"], method_info={"coverage": {"tail_cut": 40, "label_cut": 0, "ood_cut": 40,
                                                                    "label_noise": None}})
    assert "40 candidates were cut as the least typical" in unlabelled
    assert "were cut" not in _bias_text(["coverage"], method_info={"coverage": {"tail_cut": 0}})


def test_biases_follow_the_recipe_balance_dedup_and_hard():
    plain = _bias_text(["random"])
    assert "No balancing" in plain and "Duplicates were not removed" not in plain  # _run() deduplicated (near)
    assert "Deduplicated (`near`)" in plain
    rich = _bias_text(["rad"], balance="class", config={"dedup": None, "hard": 2, "budget": "0.3"})
    assert "Balanced by class" in rich and "Duplicates were not removed" in rich and "2 HARD augmentations" in rich


def test_recipe_of_a_causal_lm_run_says_what_scoring_stored():
    run = _run()
    run.manifest.update(methods=["miniplm"], scoring={"kind": "causal_lm", "token_topk": 8, "tokenizer_shared": True},
                        models={"teacher": {}, "student": {}, "reference": {}})
    step = _section(render_card(run, name="tiny", plots={}), "## Curation recipe").split("\n2. ")[0]
    assert "per-token top-8 log-probabilities with the leftover mass" in step and "sequence NLL" in step
    assert "teacher, student and reference causal LMs" in step and "KL(teacher ‖ student)" in step
    assert "probabilities, KL, confidences, margins" not in step  # the image wording
    run.manifest.update(scoring={"kind": "causal_lm", "token_topk": 8, "tokenizer_shared": False}, models={})
    step = _section(render_card(run, name="tiny", plots={}), "## Curation recipe").split("\n2. ")[0]
    assert "no token KL" in step and "student causal LMs" in step and "reference" not in step.split(":")[0]
    image = _section(render_card(_run(), name="tiny", plots={}), "## Curation recipe")
    assert "probabilities, KL, confidences, margins, entropies" in image


def test_miniplm_is_student_coupled_only_with_the_student_as_reference():
    student_ref = _bias_text(["miniplm"], method_info={"miniplm": {"reference": "student as reference (mean NLL)"}})
    assert "Student coupling" in student_ref
    assert "Student coupling" not in _bias_text(["miniplm"], method_info={"miniplm": {"reference": "hf:ref"}})


def test_dedup_summary_reads_what_ran_from_the_manifest():
    from kdata.report.card_biases import dedup_summary

    info = {"level": "near", "removed": {"exact": 5}, "near": "skipped: no embedder"}
    d = dedup_summary({"dedup_level": "near", "method_info": {"dedup": info}}, {"dedup": "near"})
    assert d["method"] == "exact" and d["skipped"] == {"near": "no embedder"} and d["threshold"] is None
    d = dedup_summary({"dedup_level": "near", "method_info": {"dedup": {"removed": {"exact": 1, "near": 2},
                                                                        "near_threshold": 0.99}}}, {})
    assert d["method"] == "near" and d["threshold"] == 0.99
