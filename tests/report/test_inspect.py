"""``kdata inspect``: terminal and JSON summaries, one sample, thumbnail grid, the integrity check."""

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from kdata.cli import main


@pytest.fixture()
def run_copy(demo_run, tmp_path) -> Path:
    out = tmp_path / "ds"
    shutil.copytree(demo_run, out)
    return out


def _inspect_json(path, capsys, *extra):
    code = main(["inspect", str(path), "--json", *extra])
    return code, json.loads(capsys.readouterr().out)


def test_json_summary_matches_the_data(demo_run, capsys):
    code, s = _inspect_json(demo_run, capsys)
    assert code == 0 and s["integrity"]["ok"] and s["integrity"]["problems"] == []
    manifest = json.loads((demo_run / "manifest.json").read_text())
    assert s["counts"] == manifest["counts"]
    shards = pq.read_table(demo_run / "data")
    dec = pq.read_table(demo_run / "decisions.parquet")
    assert s["rows"] == shards.num_rows == manifest["counts"]["kept"]
    # class balance: kept column is the shards' teacher_pred histogram; pool column covers every scored row
    hist = np.bincount(shards.column("teacher_pred").to_numpy(), minlength=10)
    assert [r["kept_teacher"] for r in s["class_balance"]] == hist.tolist()
    assert sum(r["pool_teacher"] for r in s["class_balance"]) == manifest["counts"]["n_in"] - \
        manifest["counts"]["quarantined"]
    # kd3 ranks: every kept score is at least every over-budget score
    q = s["score_quantiles"]["score_kd3"]
    assert q["kept"]["n"] == manifest["counts"]["kept"] and q["rejected"]["n"] == manifest["counts"]["rejected"]
    assert q["kept"]["min"] >= q["rejected"]["max"]
    assert s["agreement"]["kept"]["teacher_student"] == pytest.approx(
        float(np.mean(shards.column("agree").to_numpy(zero_copy_only=False))))
    d = dec.to_pandas()
    assert s["agreement"]["all_scored"]["teacher_student"] == pytest.approx(
        float((d.teacher_pred == d.student_pred).mean()))
    assert s["card"] == {"present": True, "recorded": True, "changed": []}
    assert len(s["examples"]) == 5 and [e["rank"] for e in s["examples"]] == [0, 1, 2, 3, 4]
    assert s["rejected_examples"] and all(e["reason"] for e in s["rejected_examples"])


def test_terminal_summary_has_tables(demo_run, capsys):
    assert main(["inspect", str(demo_run)]) == 0
    text = capsys.readouterr().out
    for needle in ("kept 437", "decisions", "kd3_over_budget", "class balance", "score quantiles",
                   "agreement", "integrity: ok", "kept examples", "rejected examples"):
        assert needle in text, needle


def test_tampered_shard_reports_mismatch_and_exits_1(run_copy, capsys):
    shard = next((run_copy / "data").glob("*.parquet"))
    data = bytearray(shard.read_bytes())
    mid = len(data) // 2
    data[mid:mid + 8] = bytes(b ^ 0xFF for b in data[mid:mid + 8])  # same size, different bytes
    shard.write_bytes(bytes(data))
    assert main(["inspect", str(run_copy)]) == 1
    out = capsys.readouterr().out
    assert "FAILED" in out and "sha256 mismatch" in out and shard.name in out
    code, s = _inspect_json(run_copy, capsys)
    assert code == 1 and not s["integrity"]["ok"]
    assert any("sha256 mismatch" in p for p in s["integrity"]["problems"])


def test_truncated_shard_is_reported_not_a_traceback(run_copy, capsys):
    shard = next((run_copy / "data").glob("*.parquet"))
    shard.write_bytes(shard.read_bytes()[:1000])
    code, s = _inspect_json(run_copy, capsys)
    assert code == 1
    probs = " ".join(s["integrity"]["problems"])
    assert "size" in probs and "unreadable shard" in probs
    assert s["rows"] is None and s["counts"]["kept"] == 437


def test_edited_card_is_reported_but_not_an_integrity_failure(run_copy, capsys):
    card = run_copy / "README.md"
    card.write_text(card.read_text().replace("license: unknown", "license: cc-by-4.0"))
    code, s = _inspect_json(run_copy, capsys)
    assert code == 0 and s["card"]["changed"] == ["README.md"]


def test_sample_id_kept_rejected_unknown(demo_run, capsys):
    dec = pq.read_table(demo_run / "decisions.parquet").to_pandas()
    kept_id = pq.read_table(demo_run / "data", columns=["sample_id", "rank"]).to_pandas() \
        .sort_values("rank").sample_id.iloc[3]
    rej = dec[dec.decision == "rejected"].iloc[0]
    code, s = _inspect_json(demo_run, capsys, "--sample-id", kept_id)
    assert code == 0 and s["decision"] == "kept" and s["shard_row"]["rank"] == 3
    assert s["decision_row"]["score_kd3"] == pytest.approx(s["shard_row"]["score_kd3"])
    assert s["shard_row"]["image"].endswith("bytes>") and len(s["shard_row"]["teacher_topk_prob"]) == 5
    code, s = _inspect_json(demo_run, capsys, "--sample-id", rej.sample_id)
    assert code == 0 and s["decision"] == "rejected" and s["reason"] == rej.reason
    assert "shard_row" not in s and s["decision_row"]["score_kd3"] == pytest.approx(rej.score_kd3)
    assert main(["inspect", str(demo_run), "--sample-id", rej.sample_id]) == 0
    text = capsys.readouterr().out
    assert "rejected" in text and rej.reason in text and "score_kd3" in text
    assert main(["inspect", str(demo_run), "--sample-id", "no-such-id"]) == 2
    cap = capsys.readouterr()
    assert cap.out == "" and len(cap.err.strip().splitlines()) == 1 and "no-such-id" in cap.err


def test_grid_writes_a_png(demo_run, tmp_path, capsys):
    grid = tmp_path / "sub" / "grid.png"
    code, s = _inspect_json(demo_run, capsys, "--grid", str(grid))
    assert code == 0 and s["grid"]["path"] == str(grid)
    with Image.open(grid) as im:
        im.verify()
    with Image.open(grid) as im:
        assert im.format == "PNG" and im.size[0] >= 800
    assert main(["inspect", str(demo_run), "--grid", str(tmp_path / "grid.jpg")]) == 2


def test_progress_quiet_and_bars():
    from rich.console import Console

    from kdata.cli.common import ProgressBars, progress_printer

    assert progress_printer(True) is None
    assert progress_printer(False) is None  # stderr is not a terminal under pytest
    buf = io.StringIO()
    bars = ProgressBars(console=Console(file=buf, force_terminal=True, width=100))
    for i in range(5):
        bars("scoring", i, 4)
    assert bars._progress is None  # every stage finished: the live display stopped
    bars("selecting")
    bars("writing", 0, 3)
    assert bars._progress is not None
    bars("writing", 3, 3)
    assert bars._progress is None
    text = buf.getvalue()
    assert "scoring" in text and "4/4" in text and "selecting" in text and "3/3" in text


def test_decisions_by_stage_name_the_stages_the_decisions_table_holds(rad_run, capsys):
    """Kept rows were grouped under a stage 'kept' that no row of decisions.parquet has."""
    code, s = _inspect_json(rad_run, capsys)
    dec = pq.read_table(rad_run / "decisions.parquet", columns=["stage", "decision"]).to_pandas()
    want = {st: g["decision"].value_counts().to_dict() for st, g in dec.groupby("stage")}
    assert code == 0 and s["decisions"]["by_stage"] == want and "kept" not in s["decisions"]["by_stage"]
    card = (rad_run / "README.md").read_text()
    assert "`kept`: kept" not in card and "Decisions by the stage that made them: " in card
