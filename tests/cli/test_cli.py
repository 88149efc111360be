"""The kdata CLI: every command, --json, exit codes and one-line errors on bad input."""

import json
import os
import subprocess
import sys

import pytest

from kdata.cli import main


def run_cli(*args, env=None):
    """Run the real console entry point in a subprocess: (exit code, stdout, stderr)."""
    p = subprocess.run([sys.executable, "-m", "kdata.cli", *args], capture_output=True, text=True,
                       env={**os.environ, **(env or {})}, timeout=300)
    return p.returncode, p.stdout, p.stderr


def test_help_lists_every_command():
    code, out, err = run_cli("--help")
    assert code == 0
    for cmd in ("select", "inspect", "demo"):
        assert cmd in out


def test_select_json_and_inspect(tmp_path, builtin_models, capsys):
    out = tmp_path / "sel"
    code = main(["select", "--pool", "builtin:digits-web", "--teacher", "builtin:digits-teacher",
                 "--student", "builtin:digits-student", "--method", "kd3", "--budget", "200",
                 "--out", str(out), "--seed", "1", "--device", "cpu", "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    c = report["counts"]
    assert c["kept"] == 200 and c["n_in"] == c["kept"] + c["rejected"] + c["quarantined"]
    assert main(["inspect", str(out), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["rows"] == 200 and s["integrity"]["ok"]
    assert sum(s["class_histogram"].values()) == 200
    assert "score_kd3" in s["score_quantiles"]
    assert main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert "kept 200" in text


@pytest.mark.parametrize("args,match", [
    (["--pool", "/no/such/pool"], "/no/such/pool: pool not found"),
    (["--method", "nope"], "unknown method 'nope'"),
    (["--budget", "0"], "--budget 0: must be positive"),
    (["--budget", "999999"], "larger than the pool"),
    (["--budget", "-0.5"], "must be positive"),
    (["--teacher", "builtin:nope"], "unknown built-in model"),
    (["--device", "tpu"], "unknown device"),
    (["--hard", "-1"], "--hard -1: must be ≥ 0"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, builtin_models, capsys, args, match):
    out = tmp_path / "out"
    code = main(["select", "--out", str(out), *args])
    err = capsys.readouterr().err
    assert code == 2
    assert match in err and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()


def test_out_dir_with_a_different_run_is_refused(tmp_path, builtin_models, capsys):
    out = tmp_path / "out"
    assert main(["select", "--out", str(out), "--method", "random", "--budget", "10"]) == 0
    capsys.readouterr()
    assert main(["select", "--out", str(out), "--method", "random", "--budget", "10", "--no-cache"]) == 0
    assert "--no-cache scored nothing again" in capsys.readouterr().err  # the same run, complete: kept, and said
    assert main(["select", "--out", str(out), "--method", "random", "--budget", "11"]) == 2
    assert "already holds a different run (budget '10' there, '11' here)" in capsys.readouterr().err
    assert main(["select", "--out", str(out), "--method", "random", "--budget", "10", "--precision", "fp32"]) == 2
    assert "(precision 'auto' there, 'fp32' here)" in capsys.readouterr().err  # the option that differs, named
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    assert main(["select", "--out", str(tmp_path / "other"), "--budget", "10"]) == 2
    assert "holds no kdata manifest" in capsys.readouterr().err
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"


def test_usage_errors_exit_2():
    code, _, err = run_cli("select")
    assert code == 2 and "--out" in err
    code, _, err = run_cli("inspect", "/no/such/dir")
    assert code == 2 and "/no/such/dir" in err


def test_empty_pool_and_bad_parquet(tmp_path, builtin_models, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    empty = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"sample_id": pa.array([], pa.string()), "image": pa.array([], pa.binary())}), empty)
    assert main(["select", "--pool", str(empty), "--out", str(tmp_path / "o1"), "--budget", "1"]) == 2
    assert "empty" in capsys.readouterr().err
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"sample_id": ["a"], "image": [3]}), bad)
    assert main(["select", "--pool", str(bad), "--out", str(tmp_path / "o2"), "--budget", "1"]) == 2
    assert f"{bad}: column 'image' has type int64" in capsys.readouterr().err


def test_corrupt_images_are_quarantined_and_counted(tmp_path, builtin_models, capsys):
    import pyarrow.parquet as pq

    from kdata.pools.builtin import digits_web

    pool = digits_web().slice(0, 40)
    images = pool.column("image").to_pylist()
    images[3] = b""
    images[7] = images[7][:20]  # truncated PNG
    images[9] = b"not an image at all"
    import pyarrow as pa

    pool = pool.set_column(pool.schema.get_field_index("image"), "image", pa.array(images, pa.binary()))
    path = tmp_path / "pool.parquet"
    pq.write_table(pool, path)
    out = tmp_path / "out"
    assert main(["select", "--pool", str(path), "--out", str(out), "--budget", "10", "--json"]) == 0
    c = json.loads(capsys.readouterr().out)["counts"]
    assert c == {**c, "n_in": 40, "kept": 10, "quarantined": 3, "rejected": 27}
    assert main(["inspect", str(out), "--json"]) == 0
    q = json.loads(capsys.readouterr().out)["quarantined"]
    assert {x["sample_id"] for x in q} == {pool.column("sample_id")[i].as_py() for i in (3, 7, 9)}
    assert all(x["error"] for x in q)


def test_a_failure_is_one_line_even_when_a_library_message_spans_several():
    from kdata.cli import error_line
    from kdata.core.errors import KdataError

    wrapped = KdataError("m.pt2: cannot load (Constraints violated (batch)!\n  - Not all values of batch\n\nfix)")
    assert error_line(wrapped) == ("kdata: error: m.pt2: cannot load (Constraints violated (batch)! "
                                   "- Not all values of batch fix)")
    line = error_line(RuntimeError("\ntorch said this\nand a long story after it"))
    assert line == "kdata: error: RuntimeError: torch said this (set KDATA_DEBUG=1 for the traceback)"


def test_a_budget_the_pool_cannot_fill_is_said_plainly(tmp_path, builtin_models, capsys):
    """Exact duplicates leave fewer rows than the budget: the summary says so, on a rerun too."""
    argv = ["select", "--method", "kd3", "--budget", "1450", "--dedup", "exact",
            "--out", str(tmp_path / "o"), "--device", "cpu", "--quiet"]
    for status in ("written", "already complete"):
        assert main(argv) == 0
        out = capsys.readouterr().out
        kept = int(out.split("kept ")[1].split()[0])
        assert f"kdata: {status}" in out and kept < 1450
        assert f"note: the budget was 1450 rows; only {kept} were left to keep" in out
    assert main(argv + ["--json"]) == 0  # with --json, stdout is the JSON and the note goes to stderr
    cap = capsys.readouterr()
    rep = json.loads(cap.out)
    assert rep["counts"]["kept"] == kept and rep["info"]["budget_rows"] == 1450
    assert cap.err.strip() == f"kdata: note: the budget was 1450 rows; only {kept} were left to keep after the " \
        "filters, dedup and quarantine (decisions.parquet says why each row went)"


def test_budget_1_is_a_count_and_says_so(tmp_path, builtin_models, capsys):
    """``1`` keeps one row while ``1.0`` keeps the pool: the spelling that reads both ways gets a note."""
    argv = ["select", "--method", "random", "--out", str(tmp_path / "o"), "--device", "cpu", "--quiet", "--json"]
    assert main(argv + ["--budget", "1"]) == 0
    cap = capsys.readouterr()
    assert json.loads(cap.out)["counts"]["kept"] == 1
    assert cap.err.strip() == "kdata: note: --budget 1 is a count (one row); --budget 1.0 keeps the whole pool"
    assert main(argv[:4] + [str(tmp_path / "p")] + argv[5:] + ["--budget", "2"]) == 0
    assert "note" not in capsys.readouterr().err


def test_the_summary_says_how_many_units_were_scored_and_how_many_reused(tmp_path, builtin_models, capsys):
    for name in ("a", "b"):  # the second run finds every unit's scores in the cache
        assert main(["select", "--method", "random", "--budget", "20", "--out", str(tmp_path / name),
                     "--device", "cpu", "--quiet"]) == 0
    assert "  pool units 4: 4 with cached scores, 0 scored now" in capsys.readouterr().out


def test_a_run_of_many_shards_names_a_few_and_sums_the_rest(tmp_path, builtin_models, capsys):
    from kdata.cli.common import MAX_FILES_LISTED

    out = tmp_path / "out"
    assert main(["select", "--method", "random", "--budget", "60", "--rows-per-shard", "5", "--out", str(out),
                 "--quiet", "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    named = [ln for ln in lines if ln.strip().startswith("data/train-")]
    assert len(named) == MAX_FILES_LISTED - 1 and named[0].strip().startswith("data/train-00000-of-00012.parquet")
    rest = 12 - len(named)
    assert any(ln.startswith(f"  … {rest} more files  {5 * rest} rows  ") and ln.endswith(f"(every file: {out}/manifest.json)")
               for ln in lines)


@pytest.mark.parametrize("command", [["inspect"], ["card"], ["dedup", "--level", "exact", "--out", "OUT"]])
def test_a_missing_or_file_dataset_is_worded_alike_by_every_command(tmp_path, capsys, command):
    (tmp_path / "file").write_text("x")
    for target, why in (("nope", "no such directory"), ("file", "not a directory")):
        argv = [a.replace("OUT", str(tmp_path / "out")) for a in command]
        assert main([argv[0], str(tmp_path / target), *argv[1:]]) == 2
        assert capsys.readouterr().err == f"kdata: error: {tmp_path / target}: {why} (expected a curated dataset)\n"
