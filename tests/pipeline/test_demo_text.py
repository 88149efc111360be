"""``kdata demo --text``: the text job on the embedded default (selection only here; the trainer's
effect on perplexity is tested in tests/training/test_text_train.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import pyarrow.parquet as pq


def test_demo_text_curates_builtin_text_web_with_token_soft_labels(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "kdata.cli", "demo", "--text", "--no-train", "--out", str(out),
                           "--json"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    counts = result["counts"]
    assert counts["n_in"] == counts["kept"] + counts["rejected"] + counts["quarantined"]
    assert abs(counts["kept"] - 0.3 * counts["n_in"]) <= 1
    table = pq.read_table(out / "data")
    assert {"input_ids", "teacher_topk_ids", "teacher_topk_logprobs", "teacher_rest_mass"} <= set(table.column_names)
    assert table.num_rows == counts["kept"]
    junk = table.column("source").to_pylist().count("junk") / table.num_rows
    assert junk < 0.12  # the pool has ~12% junk; the recipe keeps less of it
    assert "training" not in result


def test_demo_text_trains_both_students_as_the_readme_runs_it(tmp_path, capsys):
    """The README's command with training: the random baseline is selected from the same pool without the
    curated run's reference model (random reads none, and select refuses one it does not read)."""
    from kdata.cli import main

    assert main(["demo", "--text", "--epochs", "1", "--out", str(tmp_path / "demo"), "--json", "--quiet"]) == 0
    result = json.loads(capsys.readouterr().out)
    ppl = result["training"]
    assert ppl["rows"] == result["counts"]["kept"] and ppl["epochs"] == 1
    assert {"student_curated", "student_random"} <= set(ppl), ppl
    assert all(0 < ppl[k] < ppl["student_before"] for k in ("student_curated", "student_random")), ppl
