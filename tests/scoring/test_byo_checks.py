"""Bring-your-own predictions (``--scores``): exact per-row probabilities above 128 classes
(``kdata.core.exact_probs``), and the values that used to pass unchecked — NaN in a loss or log-prob
column, labels that are not class indices, a class named twice in a top-k row, a log-prob-only file
given to a method that ranks classes, a model given beside the file that stands in for it."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from kdata.cli import main
from kdata.core.errors import KdataError
from kdata.core.exact_probs import exact_columns
from kdata.core.warn import shown_as_lines
from kdata.scoring.byo import load_scores


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.float64)
    m = z.max(1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(1, keepdims=True))


def test_exact_columns_equal_a_float64_reference():
    rng = np.random.default_rng(0)
    t, s = rng.normal(size=(50, 300)) * 3, rng.normal(size=(50, 300)) * 3
    label = rng.integers(-1, 300, 50)
    label[:3] = [-1, 300, 7]  # unknown, out of range, known
    got = exact_columns(torch.tensor(t), torch.tensor(s), temperature=2.0, label_idx=torch.tensor(label))
    lt, ls = _log_softmax(t / 2), _log_softmax(s / 2)
    pred = lt.argmax(1)
    y = np.where((label >= 0) & (label < 300), label, pred)
    rows = np.arange(50)
    np.testing.assert_allclose(got["teacher_y_logprob"].numpy(), lt[rows, y], atol=1e-5)
    np.testing.assert_allclose(got["student_y_logprob"].numpy(), ls[rows, y], atol=1e-5)
    np.testing.assert_allclose(got["student_pred_logprob"].numpy(), ls[rows, pred], atol=1e-5)
    np.testing.assert_allclose(got["kd3_half"].numpy(), (0.5 * np.exp(lt) + 0.5 * np.exp(ls)).max(1), atol=1e-6)


@pytest.fixture
def big_c(tmp_path):
    """300 classes (over the 128 whose logits the scores keep), labels on every row."""
    rng = np.random.default_rng(2)
    n, c = 200, 300
    t, s = rng.normal(size=(n, c)).astype(np.float32), rng.normal(size=(n, c)).astype(np.float32)
    y = rng.integers(0, c, n)
    path = tmp_path / "big.parquet"
    pq.write_table(pa.table({"sample_id": [f"r{i}" for i in range(n)], "teacher_logits": list(t),
                             "student_logits": list(s), "label_idx": y}), path)
    lt, ls = _log_softmax(t), _log_softmax(s)
    rows = np.arange(n)
    best = {"miniplm": lt[rows, y] - ls[rows, y], "kd3": (0.5 * np.exp(lt) + 0.5 * np.exp(ls)).max(1)}
    return path, {m: {f"r{i}" for i in np.argsort(-v)[:30]} for m, v in best.items()}


@pytest.mark.parametrize("method", ["miniplm", "kd3"])
def test_over_128_classes_the_methods_keep_what_the_full_logits_rank_first(big_c, tmp_path, capsys, method):
    path, want = big_c
    table, _, _ = load_scores(str(path))
    assert "teacher_logits" not in table.column_names and "kd3_half" in table.column_names
    out = tmp_path / method
    assert main(["select", "--scores", str(path), "--method", method, "--budget", "30", "--out", str(out),
                 "--quiet"]) == 0
    dec = pq.read_table(out / "decisions.parquet").to_pylist()
    assert {d["sample_id"] for d in dec if d["decision"] == "kept"} == want[method]  # top-k alone: 8 of 30


def _logits_file(tmp_path, **extra) -> str:
    rng = np.random.default_rng(1)
    n = 12
    cols = {"sample_id": [f"s{i}" for i in range(n)],
            "teacher_logits": list(rng.normal(size=(n, 4)).astype(np.float32)),
            "student_logits": list(rng.normal(size=(n, 4)).astype(np.float32))}
    cols.update(extra)
    path = tmp_path / "p.parquet"
    pq.write_table(pa.table(cols), path)
    return str(path)


@pytest.mark.parametrize("column, values, says", [
    ("teacher_loss", [1.0] * 5 + [float("nan")] + [1.0] * 6, "column 'teacher_loss' row 5 (sample_id 's5'): non-finite"),
    ("teacher_loss", ["a"] * 12, "column 'teacher_loss': expected numbers, got string"),
    ("teacher_logprob", [[-1.0, -2.0]] * 3 + [[-1.0, float("inf")]] + [[-1.0]] * 8,
     "column 'teacher_logprob' row 3 (sample_id 's3'): non-finite"),
    ("label_idx", [1.0] * 7 + [1.5] + [1.0] * 4, "column 'label_idx' row 7 (sample_id 's7'): 1.5 is not a class index"),
    ("label_idx", ["cat"] * 12, "column 'label_idx': expected a class index (integer) per row, got string"),
])
def test_bad_values_in_optional_columns_are_one_line_naming_the_row(tmp_path, column, values, says):
    path = _logits_file(tmp_path, **{column: values})
    with pytest.raises(KdataError) as err:
        load_scores(path)
    assert str(err.value).startswith(f"{path}: {says}"), str(err.value)


def _topk_file(tmp_path, teacher_idx) -> str:
    """Two rows of top-2 predictions, the teacher's classes ``teacher_idx``."""
    path = tmp_path / "topk.parquet"
    pq.write_table(pa.table({"sample_id": ["a", "b"], "teacher_topk_idx": teacher_idx,
                             "teacher_topk_prob": [[0.6, 0.3], [0.6, 0.3]], "student_topk_idx": [[0, 1], [0, 1]],
                             "student_topk_prob": [[0.5, 0.4], [0.5, 0.4]]}), path)
    return str(path)


def test_a_class_named_twice_in_a_top_k_row_is_refused(tmp_path):
    path = _topk_file(tmp_path, [[0, 1], [2, 2]])
    with pytest.raises(KdataError, match=r"column 'teacher_topk_idx' row 1 \(sample_id 'b'\): class 2 appears twice"):
        load_scores(path)


def test_cli_refuses_what_a_predictions_file_cannot_drive(tmp_path, capsys):
    lp = tmp_path / "lp.parquet"
    pq.write_table(pa.table({"sample_id": [f"s{i}" for i in range(20)], "teacher_logprob": [-1.0] * 20,
                             "reference_logprob": [-2.0] * 20}), lp)
    for args, says in (
        ([], "so the default recipe has nothing to rank by; use --method miniplm"),
        (["--method", "kd3"], "so --method kd3 has nothing to rank by"),
        (["--method", "miniplm", "--teacher", "other.pt2"], "--teacher other.pt2: --scores"),
    ):
        code = main(["select", "--scores", str(lp), "--budget", "5", "--out", str(tmp_path / "o"), *args])
        err = capsys.readouterr().err
        assert code == 2 and says in err and err.count("\n") == 1, err
        assert not (tmp_path / "o").exists()
    assert main(["select", "--scores", str(lp), "--method", "miniplm", "--budget", "5", "--out", str(tmp_path / "o"),
                 "--quiet"]) == 0


def test_balance_by_domain_without_a_domain_anywhere_names_where_it_can_come_from(tmp_path, capsys):
    path = _logits_file(tmp_path)
    code = main(["select", "--scores", path, "--method", "kd3", "--balance", "domain", "--budget", "4",
                 "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert "--balance domain needs a 'domain' column: in the pool, or in the --scores file" in err and ": :" not in err


def test_probabilities_given_as_logits_are_read_as_logits_with_one_warning(tmp_path, capsys):
    p = np.full((6, 3), 0.1, np.float32)
    p[:, 0] = 0.8
    path = _logits_file(tmp_path)
    pq.write_table(pa.table({"sample_id": [f"s{i}" for i in range(6)], "teacher_logits": list(p),
                             "student_logits": list(np.log(p))}), path)
    with shown_as_lines():  # as the kdata command shows kdata's warnings
        load_scores(path)
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "column 'teacher_logits' looks like probabilities" in err[0], err
    pq.write_table(pa.table({"sample_id": [f"s{i}" for i in range(6)], "teacher_logits": list(np.log(p)),
                             "student_logits": list(np.log(p))}), path)
    load_scores(path)
    assert capsys.readouterr().err == ""


def test_a_log_prob_only_file_balances_by_domain_but_not_by_class(tmp_path, capsys):
    lp = tmp_path / "lp.parquet"
    pq.write_table(pa.table({"sample_id": [f"s{i}" for i in range(20)], "teacher_logprob": [-1.0 - i / 10 for i in range(20)],
                             "reference_logprob": [-2.0] * 20, "domain": [f"d{i % 2}" for i in range(20)]}), lp)
    args = ["select", "--scores", str(lp), "--method", "miniplm", "--budget", "6"]
    assert main([*args, "--balance", "domain", "--out", str(tmp_path / "a"), "--quiet"]) == 0
    capsys.readouterr()
    assert main([*args, "--balance", "class", "--out", str(tmp_path / "b")]) == 2
    assert "so --balance class has nothing to rank by" in capsys.readouterr().err


def test_a_label_outside_the_predictions_classes_is_one_line_naming_the_row(tmp_path):
    path = _logits_file(tmp_path, label_idx=[0, 1, 2, 3, -1, 4] + [0] * 6)  # 4 classes: 0..3, -1 unknown
    with pytest.raises(KdataError) as err:
        load_scores(path)
    assert str(err.value) == (f"{path}: column 'label_idx' row 5 (sample_id 's5'): 4 is not a class of the "
                              "predictions (0 to 3, or -1 for unknown)")
    path = _logits_file(tmp_path, label_idx=[0, 1, 2, 3, -1, 3] + [0] * 6)
    assert load_scores(path)[0].column("label_idx").to_pylist()[:6] == [0, 1, 2, 3, -1, 3]


def test_per_token_logprob_lists_of_different_lengths_are_refused(tmp_path):
    path = tmp_path / "lp.parquet"
    pq.write_table(pa.table({"sample_id": ["a", "b"], "teacher_logprob": [[-1.0, -2.0], [-1.0, -2.0, -0.5]],
                             "reference_logprob": [[-1.5, -2.5], [-1.0, -2.0]]}), path)
    with pytest.raises(KdataError, match=r"column 'reference_logprob' row 1 \(sample_id 'b'\): 2 per-token values, "
                                         r"but teacher_logprob has 3 in that row"):
        load_scores(str(path))
    pq.write_table(pa.table({"sample_id": ["a", "b"], "teacher_logprob": [[-1.0, -2.0], [-1.0, -2.0, -0.5]],
                             "reference_logprob": [[-1.5, -2.5], [-1.0, -2.0, -3.0]]}), path)
    load_scores(str(path))


def test_a_scores_run_refuses_a_precision_and_records_no_model_it_did_not_load(tmp_path, capsys):
    import json

    path = _logits_file(tmp_path)
    code = main(["select", "--scores", path, "--precision", "bf16", "--method", "kd3", "--budget", "4",
                 "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--precision bf16: --scores" in err, err
    assert main(["select", "--scores", path, "--method", "kd3", "--budget", "4", "--out", str(tmp_path / "o"),
                 "--quiet"]) == 0
    m = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert m["config"]["teacher"] is None and m["config"]["student"] is None and m["config"]["precision"] is None
    assert m["models"]["teacher"]["source"] == "bring-your-own predictions"


def test_a_topk_above_the_files_k_warns_once(tmp_path, capsys):
    path = _topk_file(tmp_path, [[0, 1], [2, 3]])
    load_scores(path, topk=2)
    assert capsys.readouterr().err == ""
    with shown_as_lines():
        load_scores(path, topk=3)
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "--topk 3 is above the 2 classes per row the file gives" in err[0], err
