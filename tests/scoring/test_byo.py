"""``--scores FILE.parquet``: bring-your-own predictions, their errors, and the pipeline without models."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kdata.scoring.byo import load_scores
from kdata.cli import main
from kdata.core.errors import KdataError
from tests.helpers.methods import write_predictions


def _table(rows_t, rows_s, t_type=pa.list_(pa.float32()), s_type=pa.list_(pa.float32())):
    return pa.table({"sample_id": [f"s{i}" for i in range(len(rows_t))],
                     "teacher_logits": pa.array(rows_t, t_type), "student_logits": pa.array(rows_s, s_type)})


@pytest.mark.parametrize("t,s,match", [
    ([[1, 2, 3], [1, 2, 3], [1, 2, 3]], [[1, 2, 3], [1, 2, 3], [1, float("nan"), 3]],
     r"column 'student_logits' row 2 \(sample_id 's2'\): non-finite value nan"),
    ([[1, 2, 3], [1, 2, float("inf")]], [[1, 2, 3], [1, 2, 3]], r"column 'teacher_logits' row 1 .*non-finite value inf"),
    ([[1, 2, 3], [1, 2], [1, 2, 3]], [[1, 2, 3]] * 3, r"column 'teacher_logits' row 1 .*ragged lists: 2 values, but row 0 has 3"),
    ([[1, 2, 3]] * 3, [[1, 2, 3, 4]] * 3, r"column 'student_logits' row 0 .*mismatched class counts: 4 values, but teacher_logits has 3"),
    ([[1, 2, 3], None], [[1, 2, 3]] * 2, r"column 'teacher_logits' row 1 .*null list"),
])
def test_bad_predictions_name_column_and_first_bad_row(tmp_path, t, s, match):
    path = tmp_path / "bad.parquet"
    pq.write_table(_table(t, s), path)
    with pytest.raises(KdataError, match=match) as exc:
        load_scores(str(path))
    assert str(exc.value).startswith(str(path))
    assert "\n" not in str(exc.value)


def test_other_bad_files(tmp_path):
    p = tmp_path / "noid.parquet"
    pq.write_table(pa.table({"teacher_logits": [[1.0, 2.0]], "student_logits": [[1.0, 2.0]]}), p)
    with pytest.raises(KdataError, match="missing required column 'sample_id'"):
        load_scores(str(p))
    p = tmp_path / "dup.parquet"
    pq.write_table(pa.table({"sample_id": ["a", "a"], "teacher_logits": [[1.0, 2.0]] * 2,
                             "student_logits": [[1.0, 2.0]] * 2}), p)
    with pytest.raises(KdataError, match="'a' occurs more than once"):
        load_scores(str(p))
    p = tmp_path / "topk.parquet"
    pq.write_table(pa.table({"sample_id": ["a", "b"], "teacher_topk_idx": [[0, 1], [2, 1]],
                             "teacher_topk_prob": [[0.6, 0.3], [0.9, 0.5]], "student_topk_idx": [[0, 1], [1, 0]],
                             "student_topk_prob": [[0.5, 0.2], [0.5, 0.2]]}), p)
    with pytest.raises(KdataError, match=r"column 'teacher_topk_prob' row 1 .*sum to at most 1"):
        load_scores(str(p))
    p = tmp_path / "nothing.parquet"
    pq.write_table(pa.table({"sample_id": ["a"], "x": [1]}), p)
    with pytest.raises(KdataError, match="needs teacher_logits and student_logits"):
        load_scores(str(p))
    p = tmp_path / "text.txt"
    p.write_text("not parquet")
    with pytest.raises(KdataError, match="not a readable Parquet"):
        load_scores(str(p))


def test_topk_probabilities_are_accepted(tmp_path):
    p = tmp_path / "topk.parquet"
    pq.write_table(pa.table({"sample_id": ["a", "b"], "teacher_topk_idx": [[0, 1], [2, 1]],
                             "teacher_topk_prob": [[0.6, 0.3], [0.7, 0.2]], "student_topk_idx": [[0, 1], [1, 0]],
                             "student_topk_prob": [[0.5, 0.2], [0.5, 0.2]]}), p)
    scores, c, _ = load_scores(str(p))
    assert c == 3
    assert scores.column("teacher_pred").to_pylist() == [0, 2]
    np.testing.assert_allclose(scores.column("teacher_conf").to_numpy(), [0.6, 0.7], atol=1e-6)


def test_cli_select_with_scores_no_pool_and_bad_file(tmp_path, capsys):
    rng = np.random.default_rng(0)
    t = rng.normal(size=(50, 4)) * 3
    path = write_predictions(tmp_path / "p.parquet", t, t + rng.normal(size=(50, 4)),
                             domain=["a"] * 20 + ["b"] * 30)
    out = tmp_path / "out"
    assert main(["select", "--scores", path, "--method", "kd3", "--budget", "10", "--out", str(out), "--quiet"]) == 0
    shard = pq.read_table(next((out / "data").glob("*.parquet")))
    assert shard.num_rows == 10 and shard.column("image").null_count == 10  # no payload without --pool
    dec = pq.read_table(out / "decisions.parquet")
    assert dec.num_rows == 50
    assert main(["select", "--scores", path, "--method", "ddk", "--budget", "10", "--out", str(tmp_path / "o2"),
                 "--quiet"]) == 0
    bad = tmp_path / "bad.parquet"
    pq.write_table(_table([[1, 2]] * 2, [[1, 2], [1, float("nan")]]), bad)
    capsys.readouterr()
    assert main(["select", "--scores", str(bad), "--budget", "1", "--out", str(tmp_path / "o3")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "student_logits" in err and "row 1" in err
    assert not (tmp_path / "o3").exists()


def test_text_logprob_only_file_runs_miniplm(tmp_path):
    """Per-token log-probabilities only (LLM distillation): miniplm ranks by the mean difference."""
    p = tmp_path / "lp.parquet"
    pq.write_table(pa.table({"sample_id": ["a", "b", "c", "d"],
                             "teacher_logprob": pa.array([[-1.0, -2.0], [-0.5], [-3.0, -3.0], [-1.0]]),
                             "reference_logprob": pa.array([[-2.0, -2.0], [-0.4], [-1.0, -1.0], [-2.5]])}), p)
    out = tmp_path / "out"
    assert main(["select", "--scores", str(p), "--method", "miniplm", "--budget", "2", "--out", str(out),
                 "--quiet"]) == 0
    shard = pq.read_table(next((out / "data").glob("*.parquet"))).to_pandas()
    # differences: a .5, b −.1, c −2, d 1.5 → keep d then a
    assert shard.sample_id.tolist() == ["d", "a"]
    assert shard.score_miniplm.tolist() == [1.5, 0.5]
    # such shards rank rows but carry no teacher distribution: kdata train says so in one line
    from tests.helpers.cli import kdata

    rc, _, err = kdata("train", str(out), "--student", "builtin:digits-student")
    assert rc == 2 and "carry no teacher distribution to distil" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("bad_row,match", [
    (150_000, r"column 'student_logits' row 150000 \(sample_id 's150000'\): non-finite value nan"),
    (140_001, r"column 'teacher_logits' row 140001 \(sample_id 's140001'\): ragged lists: 3 values, but row 0 has 4"),
])
def test_large_file_is_streamed_and_errors_name_the_row_in_the_file(tmp_path, bad_row, match):
    """Past several row groups and read batches, the first bad row is still named by its place
    in the file; a good file of the same size scores every row in order."""
    from kdata.core.stats import chunk_rows

    n, c = 160_000, 4
    rng = np.random.default_rng(0)
    t = rng.standard_normal((n, c)).astype(np.float32)
    s = t + rng.standard_normal((n, c)).astype(np.float32)

    def table(t_rows, s_rows):
        return pa.table({"sample_id": [f"s{i}" for i in range(n)],
                         "teacher_logits": t_rows, "student_logits": s_rows,
                         "label_idx": pa.array(np.arange(n) % c, pa.int32())})

    fsl = lambda a: pa.FixedSizeListArray.from_arrays(pa.array(a.reshape(-1)), c)  # noqa: E731
    good = tmp_path / "good.parquet"
    pq.write_table(table(fsl(t), fsl(s)), good, row_group_size=50_000)
    scores, C, _ = load_scores(str(good))
    assert C == c and scores.num_rows == n and n > 2 * chunk_rows(c)  # several read batches
    assert scores.column("sample_id")[n - 1].as_py() == f"s{n - 1}"
    pred = np.asarray(scores.column("teacher_pred"))
    np.testing.assert_array_equal(pred, t.argmax(1))
    lp = np.asarray(scores.column("teacher_label_prob"))
    z = t - t.max(1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    np.testing.assert_allclose(lp, p[np.arange(n), np.arange(n) % c], atol=1e-6)

    bad = tmp_path / "bad.parquet"
    t_rows, s_rows = fsl(t), fsl(s)
    if "nan" in match:
        s2 = s.copy()
        s2[bad_row, 1] = np.nan
        s_rows = fsl(s2)
    else:
        lists = t.tolist()
        lists[bad_row] = lists[bad_row][:3]
        t_rows = pa.array(lists, pa.list_(pa.float32()))
    pq.write_table(table(t_rows, s_rows), bad, row_group_size=50_000)
    with pytest.raises(KdataError, match=match):
        load_scores(str(bad))


def test_dedup_without_payloads_is_one_line_not_a_crash_or_a_wipe(tmp_path, capsys):
    """--scores without --pool carries no images or texts: an explicit --dedup is refused up front, and
    `kdata dedup` of such a dataset is refused instead of calling every row a duplicate of one."""
    rng = np.random.default_rng(1)
    t = rng.normal(size=(40, 4)) * 3
    path = write_predictions(tmp_path / "p.parquet", t, t + rng.normal(size=(40, 4)))
    for level in ("exact", "near", "semantic"):
        assert main(["select", "--scores", path, "--dedup", level, "--budget", "10",
                     "--out", str(tmp_path / "o"), "--quiet"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and f"--dedup {level}: dedup compares the rows' images or texts" in err
        assert not (tmp_path / "o").exists()
    out = tmp_path / "curated"
    assert main(["select", "--scores", path, "--method", "kd3", "--budget", "12", "--out", str(out), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["dedup", str(out), "--level", "exact", "--out", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "its rows carry no image or text" in err and not (tmp_path / "d").exists()


def test_predicted_ids_the_pool_lacks_are_quarantined_and_a_wrong_pool_is_one_line(tmp_path, capsys):
    """Rows of --scores that --pool does not hold have no payload, and rows of --pool the file has no
    prediction for have nothing to rank them by: both quarantined with the reason, whatever the method
    (the default recipe's dedup included), counts adding up; a pool holding none of the ids is the wrong
    pool: one line, exit 2, nothing written."""
    from tests.helpers.real_inputs import digits, png_bytes

    rng = np.random.default_rng(2)
    t = rng.normal(size=(40, 10)) * 3
    path = write_predictions(tmp_path / "p.parquet", t, t + rng.normal(size=(40, 10)))
    x, _ = digits(34)
    pool_ids = [f"s{i}" for i in range(30)] + [f"extra{i}" for i in range(4)]  # 4 the file has no prediction for
    pq.write_table(pa.table({"sample_id": pool_ids, "image": [png_bytes(a) for a in x]}), tmp_path / "pool.parquet")
    for method in ("random", "default"):
        out = tmp_path / f"o-{method}"
        code = main(["select", "--scores", path, "--pool", str(tmp_path / "pool.parquet"), "--method", method,
                     "--budget", "40", "--out", str(out), "--quiet", "--json"])
        rep = json.loads(capsys.readouterr().out)
        assert code == 0 and rep["counts"]["quarantined"] == 14 and rep["counts"]["n_in"] == 44
        dec = pq.read_table(out / "decisions.parquet").to_pandas()
        q = dec[dec.decision == "quarantined"]
        assert sorted(q.sample_id) == sorted([f"s{i}" for i in range(30, 40)] + [f"extra{i}" for i in range(4)])
        assert q[q.sample_id.str.startswith("s")].error.str.contains("not in --pool").all()
        assert q[q.sample_id.str.startswith("extra")].error.str.contains("no prediction in --scores").all()
        kept = pq.read_table(out / "data").column("image")
        assert kept.null_count == 0 and len(kept) == rep["counts"]["kept"] > 0
    pq.write_table(pa.table({"sample_id": [f"other{i}" for i in range(34)], "image": [png_bytes(a) for a in x]}),
                   tmp_path / "wrong.parquet")
    code = main(["select", "--scores", path, "--pool", str(tmp_path / "wrong.parquet"), "--method", "random",
                 "--budget", "40", "--out", str(tmp_path / "w"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and not (tmp_path / "w").exists()
    assert "holds none of the 40 sample ids" in err and "'s0' there, 'other0' here" in err



@pytest.mark.parametrize("method", ["kd3", "default"])
def test_a_file_written_by_pandas_runs_like_the_same_file_written_by_pyarrow(tmp_path, capsys, method):
    """pandas 3 writes string columns as ``large_string``: the ids are one string type downstream."""
    import pandas as pd
    rs = np.random.RandomState(0)
    frame = pd.DataFrame({"sample_id": [f"s{i}" for i in range(60)],
                          "teacher_logits": list(rs.randn(60, 4).astype("float32")),
                          "student_logits": list(rs.randn(60, 4).astype("float32"))})
    big, small = tmp_path / "large.parquet", tmp_path / "small.parquet"
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False).cast(pa.schema([
        ("sample_id", pa.large_string()), ("teacher_logits", pa.list_(pa.float32())),
        ("student_logits", pa.list_(pa.float32()))])), big)
    pq.write_table(pa.table({"sample_id": frame.sample_id.tolist(),
                             "teacher_logits": pa.array(frame.teacher_logits.tolist(), pa.list_(pa.float32())),
                             "student_logits": pa.array(frame.student_logits.tolist(), pa.list_(pa.float32()))}), small)
    kept = []
    for path in (big, small):
        out = tmp_path / f"out-{path.stem}"
        assert main(["select", "--scores", str(path), "--method", method, "--budget", "12", "--out", str(out),
                     "--quiet"]) == 0, capsys.readouterr().err
        dec = pq.read_table(out / "decisions.parquet")
        kept.append(sorted(r["sample_id"] for r in dec.to_pylist() if r["decision"] == "kept"))
    assert len(kept[0]) == 12 and kept[0] == kept[1]


@pytest.mark.parametrize("n", [1, 3, 70_000])
def test_logprob_only_files_get_the_one_class_top_k_columns_built_in_arrow(tmp_path, n):
    """A logprob-only file's trivial one-class top-k columns (built from offsets and values, not one
    Python list per row) are exactly the list<…> columns of one item per row, in memory and on disk."""
    p = tmp_path / "lp.parquet"
    pq.write_table(pa.table({"sample_id": [f"s{i}" for i in range(n)],
                             "teacher_logprob": pa.array(np.full(n, -1.0)),
                             "reference_logprob": pa.array(np.full(n, -2.0))}), p)
    scores, C, _ = load_scores(str(p), topk=5, temperature=1.0)
    assert C == 1 and scores.num_rows == n
    want = {"teacher_topk_idx": pa.array([[0]] * n, pa.list_(pa.int32())),
            "student_topk_idx": pa.array([[0]] * n, pa.list_(pa.int32())),
            "teacher_topk_prob": pa.array([[1.0]] * n, pa.list_(pa.float32())),
            "student_topk_prob": pa.array([[1.0]] * n, pa.list_(pa.float32())),
            "teacher_topk_logit": pa.array([[0.0]] * n, pa.list_(pa.float32()))}
    pq.write_table(scores, tmp_path / "scores.parquet")
    back = pq.read_table(tmp_path / "scores.parquet")
    for name, col in want.items():
        got = scores.column(name).combine_chunks()
        assert got.type == col.type and got.null_count == 0 and got.equals(col), name
        assert back.column(name).combine_chunks().equals(col), name


def test_logprob_columns_that_look_like_sums_get_one_warning(tmp_path, capsys):
    """A number per row with a median below −20 is most likely a per-sequence sum: said once on stderr."""
    p = tmp_path / "sums.parquet"
    pq.write_table(pa.table({"sample_id": [f"s{i}" for i in range(10)],
                             "teacher_logprob": np.linspace(-80, -30, 10), "reference_logprob": np.linspace(-90, -20, 10)}), p)
    assert main(["select", "--scores", str(p), "--method", "miniplm", "--budget", "3", "--out", str(tmp_path / "o"),
                 "--quiet"]) == 0
    err = capsys.readouterr().err
    assert err.count("per-sequence sums rank mostly by length") == 1
    pq.write_table(pa.table({"sample_id": [f"s{i}" for i in range(10)],
                             "teacher_logprob": np.linspace(-4, -1, 10), "reference_logprob": np.linspace(-5, -1, 10)}), p)
    assert main(["select", "--scores", str(p), "--method", "miniplm", "--budget", "3", "--out", str(tmp_path / "o2"),
                 "--quiet"]) == 0
    assert "sums" not in capsys.readouterr().err
