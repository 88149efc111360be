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
                     "## Biases teacher-based selection can introduce", "## Intended and out-of-scope uses",
                     "## How to load", "## Files"]
    assert len(SECTIONS) == len(heads) + 1  # the front matter and title come first
    assert "Remove duplicates (`near`, threshold 0.900" in text and "![" not in text
    assert text.endswith("Regenerate this card with `kdata card DIR`.\n")


def test_md_table_formats_cells():
    assert md_table(["a", "b"], [[None, 0.12345], [3, "x"]]) == ["| a | b |", "|---|---|", "| – | 0.123 |",
                                                                  "| 3 | x |"]
