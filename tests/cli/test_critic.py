"""``kdata critic fit`` / ``apply`` on a text pool with rows the scorer quarantines (tiny real transformers
LMs, a real JSONL pool): fit counts labelled ids that were quarantined apart from ids the pool lacks;
apply writes every candidate, the unscorable ones with ``p_accept`` null, ``accept`` false and the reason."""

from __future__ import annotations

import csv
import json

import numpy as np
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest

pytest.importorskip("transformers")

from kdata.cli import main  # noqa: E402
from tests.helpers.text_models import text_assets  # noqa: E402


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """(assets, tmp dir, critic dir, fit's JSON) from a fit whose labels name a quarantined id and an unknown one."""
    d, tmp = text_assets(), tmp_path_factory.mktemp("critic-apply")
    labels = tmp / "labels.csv"
    with labels.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["sample_id", "accept"])
        for i in range(60):
            w.writerow([f"t{i:03d}", int(i % 3 != 0)])
        w.writerow(["one", 1])  # the pool's one-token text: quarantined as too_short
        w.writerow(["not-in-the-pool", 0])
    crit = tmp / "critic"
    args = ["critic", "fit", "--scores-from", str(d / "pool.jsonl"), "--teacher", f"hf:{d / 't'}",
            "--student", f"hf:{d / 's'}", "--labels", str(labels), "--device", "cpu"]
    assert main([*args, "--out", str(crit), "--json"]) == 0
    return d, tmp, crit, args


def test_fit_reports_quarantined_labelled_ids_apart_from_unknown_ones(fitted, capsys):
    d, tmp, crit, args = fitted
    capsys.readouterr()
    assert main([*args, "--out", str(tmp / "critic-2"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n_labelled"] == 60 and out["n_quarantined"] == 1 and out["n_missing"] == 1
    assert out["quarantined_by_reason"] == {"too_short": 1}
    assert main([*args, "--out", str(tmp / "critic-3")]) == 0
    text = capsys.readouterr().out
    assert "1 labelled ids quarantined (too_short 1)" in text and "1 labelled ids not found" in text


def test_apply_writes_every_candidate_with_the_unscorable_ones_null(fitted, capsys):
    d, tmp, crit, _ = fitted
    meta = json.loads((crit / "critic.json").read_text())
    applied = tmp / "applied.parquet"
    capsys.readouterr()
    assert main(["critic", "apply", str(crit), "--scores-from", str(d / "pool.jsonl"), "--out", str(applied),
                 "--device", "cpu", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    t = pq.read_table(applied)
    assert t.num_rows == 62 == out["n"] and out["scored"] == 60 and out["quarantined"] == 2
    assert out["quarantined_by_reason"] == {"empty_text": 1, "too_short": 1}
    assert t.column_names == ["sample_id", "p_accept", "accept", "reason", "text"]
    ids = t.column("sample_id").to_pylist()
    assert len(set(ids)) == 62 and {"one", "pool.jsonl:61"} <= set(ids)
    unscored = t.filter(pc.is_null(t.column("p_accept"))).to_pylist()
    assert {r["sample_id"]: (r["accept"], r["reason"].split(":")[0], r["text"]) for r in unscored} == \
        {"one": (False, "too_short", "a"), "pool.jsonl:61": (False, "empty_text", "   ")}
    scored = t.filter(pc.is_valid(t.column("p_accept")))
    p, acc = scored.column("p_accept").to_numpy(), scored.column("accept").to_numpy(zero_copy_only=False)
    assert np.array_equal(acc, p >= np.float32(meta["threshold"]))
    assert scored.column("reason").to_pylist() == [None if a else "critic_reject" for a in acc]
    # the text message says how many were not scored; a CSV holds the same rows (p_accept empty)
    assert main(["critic", "apply", str(crit), "--scores-from", str(d / "pool.jsonl"), "--out",
                 str(tmp / "applied.csv"), "--device", "cpu"]) == 0
    assert "2 not scored, written with p_accept null (empty_text 1, too_short 1)" in capsys.readouterr().out
    c = pcsv.read_csv(tmp / "applied.csv")
    assert c.num_rows == 62 and c.column("p_accept").null_count == 2
