"""Cards and ``kdata inspect`` on a causal-LM text run (tiny transformers LMs built in the test): kept and
rejected texts with reasons, the domain mixture before/after and perplexity quantiles, pool vs kept."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pyarrow.parquet as pq
import pytest

pytest.importorskip("transformers")

from kdata.cli import main  # noqa: E402
from kdata.report.inspect import load_run, pick_rejected  # noqa: E402
from kdata.report.text_run import text_summary  # noqa: E402
from tests.helpers.text_models import text_assets  # noqa: E402


def _summary(out):
    run = load_run(out)
    return text_summary(run, pick=lambda n: pick_rejected(run, n))


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    d = text_assets()
    out = tmp_path_factory.mktemp("textcard") / "out"
    assert main(["select", "--pool", str(d / "pool.jsonl"), "--teacher", f"hf:{d / 't'}", "--student",
                 f"hf:{d / 's'}", "--reference", f"hf:{d / 'r'}", "--method", "miniplm", "--budget", "0.3",
                 "--out", str(out), "--device", "cpu", "--quiet"]) == 0
    return out, d


def test_text_summary_matches_the_data(text_run):
    out, d = text_run
    s = _summary(out)
    shards = pq.read_table(next((out / "data").glob("*.parquet")))
    dec = pq.read_table(out / "decisions.parquet")
    # examples: the best-ranked kept texts in rank order; rejected ones with their reason and pool text
    assert [r["rank"] for r in s["kept_texts"]] == [0, 1, 2, 3, 4]
    assert s["kept_texts"][0]["text"] == " ".join(shards.column("text")[0].as_py().split())[:160]
    pool = {json.loads(x).get("sample_id"): json.loads(x)["text"] for x in (d / "pool.jsonl").read_text().splitlines()}
    reasons = dict(zip(dec.column("sample_id").to_pylist(), dec.column("reason").to_pylist()))
    assert s["rejected_texts"] and all(r["reason"] == reasons[r["sample_id"]] and r["reason"]
                                       and r["text"] == " ".join(pool[r["sample_id"]].split())[:160].replace(
                                           "\x07", "\\x07") for r in s["rejected_texts"])
    assert any("xq\\x07zz" in r["text"] for r in s["rejected_texts"])  # control characters shown, not hidden
    # domain mixture: every input sample before (62, two without a domain), the kept rows after
    mix = {r["domain"]: r for r in s["domain_mixture"]}
    assert sum(r["pool"] for r in mix.values()) == 62 and mix["(none)"]["pool"] == 2
    assert {k: r["kept"] for k, r in mix.items() if r["kept"]} == dict(Counter(shards.column("domain").to_pylist()))
    assert abs(sum(r["kept_share"] for r in mix.values()) - 1.0) < 1e-9
    # perplexity quantiles: exp of the NLL quantiles, pool = every scored row (60), kept = the shards (18)
    for who in ("teacher", "student", "reference"):
        p = s["perplexity"][who]
        assert p["pool"]["n"] == 60 and p["kept"]["n"] == 18
        nll = shards.column(f"{who}_nll").to_numpy().astype(np.float64)
        np.testing.assert_allclose(p["kept"]["p50"], np.exp(np.quantile(nll, 0.5)), rtol=1e-6)
        assert p["pool"]["p10"] <= p["pool"]["p50"] <= p["pool"]["p90"]
    # miniplm keeps high reference-minus-teacher loss: the kept teacher perplexity is not the pool's
    assert s["perplexity"]["teacher"]["kept"] != s["perplexity"]["teacher"]["pool"]


def test_card_has_text_sections(text_run):
    out, _ = text_run
    card = (out / "README.md").read_text()
    heads = [line for line in card.splitlines() if line.startswith("## ")]
    assert "## Text examples" in heads and "## Domain mixture before and after" in heads and "## Perplexity" in heads
    assert "## Class balance before and after" not in heads
    assert "| teacher | pool | 60 |" in card and "| reference | kept | 18 |" in card
    assert "Rejected texts, spread over the reasons" in card and "`miniplm_over_budget`" in card


def test_inspect_prints_text_tables_and_json(text_run, capsys):
    out, d = text_run
    assert main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    for words in ("kept texts (best ranked)", "rejected texts (by reason)", "domain mixture, pool → kept",
                  "perplexity (exp mean token NLL), pool vs kept", "reference"):
        assert words in text, words
    assert f"; reference hf:{d / 'r'}" in text.splitlines()[0]  # the header names the reference model
    assert main(["inspect", str(out), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["text"]["perplexity"]["student"]["kept"]["n"] == 18 and len(s["text"]["domain_mixture"]) == 4
    assert s["reference"] == f"hf:{d / 'r'}"


def test_moved_pool_leaves_a_note_not_an_error(text_run, tmp_path):
    import shutil

    out, _ = text_run
    m = json.loads((out / "manifest.json").read_text())
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    m["pool"]["spec"] = str(tmp_path / "gone.jsonl")
    (copy / "manifest.json").write_text(json.dumps(m))
    s = _summary(copy)
    assert "could not be read back" in s["note"] and all(r["text"] is None for r in s["rejected_texts"])
    assert s["perplexity"]["teacher"]["pool"]["n"] == 60  # from decisions.parquet, not the pool


def test_the_html_report_shows_each_sampled_rows_text(text_run, tmp_path):
    """report.html of a text run: every sampled kept and rejected row carries its own text (kept from the
    shards, rejected from the run's pool), whitespace collapsed; with the pool gone the page says why."""
    import re
    import shutil

    out, d = text_run
    page = (out / "report.html").read_text()
    data = json.loads(re.search(r'id="kdata-data">(.*?)</script>', page, re.DOTALL).group(1))
    pool = {json.loads(x).get("sample_id"): json.loads(x)["text"] for x in (d / "pool.jsonl").read_text().splitlines()}
    rows = [r for r in data["rows"] if r["decision"] != "quarantined"]
    assert data["text"] and {r["decision"] for r in rows} == {"kept", "rejected"}
    for r in rows:
        want = " ".join(pool[r["id"]].split())[:400].replace("\x07", "\\x07")
        assert r["text"] == want and r["thumb"] is None, r["id"]
    m = json.loads((out / "manifest.json").read_text())
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    m["pool"]["spec"] = str(tmp_path / "gone.jsonl")
    (copy / "manifest.json").write_text(json.dumps(m))
    assert main(["card", str(copy)]) == 0
    data = json.loads(re.search(r'id="kdata-data">(.*?)</script>', (copy / "report.html").read_text(),
                                re.DOTALL).group(1))
    assert all(r["text"] for r in data["rows"] if r["decision"] == "kept")
    assert all(r["text"] is None for r in data["rows"] if r["decision"] == "rejected")
    assert "could not be read back" in data["note"]


def test_the_decisions_table_of_a_text_run_carries_every_rows_web_label(text_run):
    """A causal LM has no classes, so the scores carry no label: the decisions table reads the pool's
    (it was null on every row, while the shards had it)."""
    out, d = text_run
    pool = {}
    for i, line in enumerate((d / "pool.jsonl").read_text().splitlines()):
        r = json.loads(line)
        pool[r.get("sample_id", f"pool.jsonl:{i}")] = r.get("label")
    dec = pq.read_table(out / "decisions.parquet").to_pylist()
    scored = [r for r in dec if r["decision"] != "quarantined"]
    assert sum(r["label"] is not None for r in scored) >= 50
    assert all(r["label"] == pool[r["sample_id"]] for r in scored)


def test_rejected_examples_show_the_web_label_of_a_causal_lm_row(text_run):
    """A causal-LM row has no class index (label_idx −1): the table shows the label as written."""
    from kdata.report.inspect import rejected_examples

    out, _ = text_run
    run = load_run(out)
    rows = rejected_examples(run, 8)
    labels = dict(zip(run.decisions.column("sample_id").to_pylist(), run.decisions.column("label").to_pylist()))
    assert rows and sum(r["label"] is not None for r in rows) >= 4
    assert all(r["label"] == labels[r["sample_id"]] for r in rows)
