"""One problem on many lines of a pool is one line of the select summary, one entry of the
manifest's ``quarantined_by_reason`` and of ``kdata inspect --json``; the line numbers stay in
decisions.parquet. A dataset whose manifest predates ``quarantined_by_reason`` still verifies and
is summarised from its decisions table."""

from __future__ import annotations

import json

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

pytest.importorskip("transformers")


def test_select_summary_manifest_and_inspect_group_quarantine_reasons(tmp_path, capsys):
    from kdata.cli import main
    from kdata.cli.common import quarantine_lines
    from kdata.dataset.writer import verify
    from kdata.report.inspect import summarise
    from tests.helpers.text_models import text_assets

    m = text_assets()
    pool = tmp_path / "mixed.jsonl"
    pool.write_text("".join(json.dumps({"id": f"r{i}", ("content" if i % 2 == 0 else "text"): f"row {i} of the pool"})
                            + "\n" for i in range(20)))
    out = tmp_path / "out"
    capsys.readouterr()
    assert main(["select", "--pool", str(pool), "--teacher", f"hf:{m / 't'}", "--student", f"hf:{m / 's'}",
                 "--budget", "0.5", "--out", str(out), "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "    quarantined undecodable_text: no 'text' field: 10\n" in text, text
    assert "other kind(s) of error" not in text

    manifest = json.loads((out / "manifest.json").read_text())
    c = manifest["counts"]
    assert c["quarantined"] == 10 and c["quarantined_by_reason"] == {"undecodable_text: no 'text' field": 10}
    assert c["kept"] + c["rejected"] + c["quarantined"] == c["n_in"] == 20
    dec = pq.read_table(out / "decisions.parquet")
    q = dec.filter(pc.equal(dec.column("decision"), "quarantined"))
    assert sorted(q.column("sample_id").to_pylist()) == sorted(f"r{i}" for i in range(0, 20, 2))  # ids as given
    assert set(q.column("reason").to_pylist()) == {"unreadable"}
    assert sorted(q.column("error").to_pylist()) == sorted(f"undecodable_text: no 'text' field (line {i + 1})"
                                                           for i in range(0, 20, 2))
    s = summarise(out)
    assert s["integrity"]["ok"] and s["decisions"]["quarantined_by_reason"] == c["quarantined_by_reason"]

    # kinds that do not add up to the quarantined count: verify says so
    bad = json.loads(json.dumps(manifest))
    bad["counts"]["quarantined_by_reason"] = {"undecodable_text: no 'text' field": 9}
    (out / "manifest.json").write_text(json.dumps(bad))
    assert verify(out) == [f"{out / 'manifest.json'}: quarantine kinds add up to 9, not to quarantined 10"]
    # kinds that add up but are not the decisions table's: verify says so too
    bad["counts"]["quarantined_by_reason"] = {"undecodable_text: not JSON": 10}
    (out / "manifest.json").write_text(json.dumps(bad))
    assert verify(out) == [f"{out / 'decisions.parquet'}: quarantine kinds {c['quarantined_by_reason']} differ from "
                           f"the manifest's {bad['counts']['quarantined_by_reason']}"]
    # a manifest written before quarantined_by_reason: still verifies, still summarised by kind
    del manifest["counts"]["quarantined_by_reason"]
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert verify(out) == []
    assert summarise(out)["decisions"]["quarantined_by_reason"] == {"undecodable_text: no 'text' field": 10}
    assert quarantine_lines(out, 10) == ["    quarantined undecodable_text: no 'text' field: 10"]


def test_one_kind_past_the_top_is_named_not_summarised():
    from kdata.cli.common import quarantine_lines

    four = {"a": 5, "b": 4, "c": 3, "d": 1}
    lines = quarantine_lines("out", 13, by_reason=four)
    assert lines == ["    quarantined a: 5", "    quarantined b: 4", "    quarantined c: 3", "    quarantined d: 1"]
    lines = quarantine_lines("out", 15, by_reason={**four, "e": 2})
    assert len(lines) == 4 and lines[-1] == "    quarantined, 2 other kind(s) of error: 3 (kdata inspect out lists each)"
