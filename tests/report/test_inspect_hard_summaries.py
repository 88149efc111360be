"""Summaries of datasets with HARD rows: one population per label.

``kdata inspect`` and the data card count the kept *input samples* as "kept" everywhere (header,
decisions, class balance, every score quantile) and show the rows HARD generated from them apart
as "generated"; the card states the HARD count K, whichever command (select, augment) recorded it.
Real image folders, the built-in models and real runs through ``kdata.cli.main``.
"""

from __future__ import annotations

import json
import re

import pytest

from kdata.cli import main
from tests.helpers.real_inputs import make_image_folder


@pytest.fixture(scope="module")
def hard_runs(tmp_path_factory, builtin_models):
    """(selected with --hard 2, augmented with --per-sample 1) from a 60-image ImageFolder."""
    root = tmp_path_factory.mktemp("hard-summaries")
    pool = make_image_folder(root / "pool", n=60)
    sel, aug = root / "sel", root / "aug"
    assert main(["select", "--pool", str(pool), "--method", "kd3", "--budget", "0.5", "--hard", "2",
                 "--out", str(sel), "--device", "cpu", "--quiet"]) == 0
    assert main(["augment", str(sel), "--per-sample", "1", "--steps", "2", "--out", str(aug), "--quiet"]) == 0
    return sel, aug


def _summary(capsys, path) -> dict:
    capsys.readouterr()
    assert main(["inspect", str(path), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def _card(path) -> str:
    return (path / "README.md").read_text()


@pytest.mark.parametrize("which", [0, 1], ids=["select-hard", "augment"])
def test_card_states_the_hard_count_not_the_config(hard_runs, which):
    out = hard_runs[which]
    k = 2 if which == 0 else 1
    card = _card(out)
    assert f"- HARD augmentation: {k} generated samples requested per original row." in card
    assert f"**Generated rows.** {k} HARD augmentations per original row" in card
    assert "batch_size" not in card.split("## Curation recipe")[1].split("```yaml")[0]
    assert "{'" not in card
    m = json.loads((out / "manifest.json").read_text())
    import yaml

    assert yaml.safe_load(card.split("---")[1])["kdata"]["hard"] == k == m["hard"]["config"]["per_sample"]


@pytest.mark.parametrize("which", [0, 1], ids=["select-hard", "augment"])
def test_inspect_counts_kept_and_generated_rows_apart(hard_runs, capsys, which):
    s = _summary(capsys, hard_runs[which])
    c = s["counts"]
    assert c["generated_kept"] > 0 and s["rows"] == c["kept"] + c["generated_kept"]
    bal = s["class_balance"]
    assert sum(r["kept_teacher"] for r in bal) == c["kept"]
    assert sum(r["generated_teacher"] for r in bal) == c["generated_kept"]
    assert sum(s["class_histogram"].values()) == c["kept"]
    # no class holds more kept rows than the scored pool predicted for it
    assert all(r["kept_teacher"] <= r["pool_teacher"] for r in bal)
    for name, by in s["score_quantiles"].items():  # a score a row lacks (null) is left out, never added
        assert (by.get("kept") or {"n": 0})["n"] <= c["kept"], name
        assert (by.get("generated") or {"n": 0})["n"] <= c["generated_kept"], name
    for name in ("student_conf", "teacher_margin", "teacher_entropy", "student_entropy", "kl_ts", "teacher_conf"):
        assert s["score_quantiles"][name]["kept"]["n"] == c["kept"], name  # every row has these
        assert s["score_quantiles"][name]["generated"]["n"] == c["generated_kept"], name
    assert s["agreement"]["kept"]["n"] == c["kept"] and s["agreement"]["generated"]["n"] == c["generated_kept"]
    assert all("#hard" not in e["sample_id"] for e in s["examples"])


def test_inspect_terminal_and_card_tables_show_generated_apart(hard_runs, capsys):
    sel = hard_runs[0]
    s = _summary(capsys, sel)
    kept, gen = s["counts"]["kept"], s["counts"]["generated_kept"]
    assert main(["inspect", str(sel)]) == 0
    text = capsys.readouterr().out
    assert "score quantiles (kept | rejected | generated)" in text
    assert re.search(rf"│ student_conf\s+│ kept\s+│\s+{kept} │", text)
    assert re.search(rf"│ student_conf\s+│ generated\s+│\s+{gen} │", text)
    head = next(line for line in text.splitlines() if "pool label" in line)
    assert "generated" in head
    card = _card(sel)
    table = card.split("## Class balance before and after")[1].split("\n\n")[1].splitlines()
    assert table[0] == ("| class | pool, web label | pool, teacher prediction | kept, teacher prediction | "
                        "generated (HARD), teacher prediction |")
    kept_col = [int(row.split("|")[4].split()[0]) for row in table[2:]]
    assert sum(kept_col) == kept
    assert f"| `student_conf` | kept | {kept} |" in card and f"| `student_conf` | generated | {gen} |" in card
    assert f"| kept | {kept} |" in card and f"| generated | {gen} |" in card
    # a generated row is shown as generated, not as a kept sample
    import pyarrow.parquet as pq

    ids = pq.read_table(sel / "data", columns=["sample_id"]).column("sample_id").to_pylist()
    ids = [i for i in ids if "#hard" in i]
    capsys.readouterr()
    assert main(["inspect", str(sel), "--sample-id", ids[0], "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["decision"] == "generated"
