"""``select`` from Python: one temperature governs every method, and what the table must be (a
pyarrow.Table with unique ids, logits ``num_classes`` wide) is checked up front, each problem one line."""

from __future__ import annotations

import warnings

import numpy as np
import pyarrow as pa
import pytest

from kdata.core.errors import KdataError
from kdata.core.stats import recorded_temperature
from kdata.selection.methods import available
from kdata.selection.run import select

LOGITS_ONLY = ["sample_id", "teacher_logits", "student_logits", "label_idx"]
BY_STATISTICS = ["rad", "teacher_confidence", "disagreement", "student_entropy"]


def kept(table, methods, temperature, *, budget=150):
    return select(table, methods=methods, budget=budget, num_classes=10, temperature=temperature).kept


def own_table(n=6, c=3, *, seed=0, ids=None, dtype=pa.float32()):
    rng = np.random.default_rng(seed)
    t = rng.normal(size=(n, c)) * 3
    return pa.table({"sample_id": ids or [f"s{i}" for i in range(n)],
                     "teacher_logits": pa.array(t.tolist(), pa.list_(dtype)),
                     "student_logits": pa.array((t + rng.normal(size=(n, c))).tolist(), pa.list_(dtype))})


@pytest.mark.parametrize("method", [*BY_STATISTICS, "kd3", "miniplm"])
def test_one_temperature_governs_every_method(digits_web_scored, method):
    """rad and the baselines read the statistics stored at the scoring temperature whatever ``temperature``
    said (0 rows moved between T=1 and T=4), while the same table's logits alone gave another selection
    at T=4 (256 rows for rad): the scores table records its temperature, and at another one the view
    re-derives every statistic from the logits."""
    _, scores = digits_web_scored
    assert recorded_temperature(scores) == 1.0
    logits_only = scores.select(LOGITS_ONLY)
    at1, at4 = kept(scores, [method], 1.0), kept(scores, [method], 4.0)
    assert (at1 != at4).sum() > 0  # the temperature acts on every method
    np.testing.assert_array_equal(at4, kept(logits_only, [method], 4.0))
    np.testing.assert_array_equal(at1, kept(logits_only, [method], 1.0))


def test_statistics_at_another_temperature_without_logits_are_refused(digits_web_scored):
    _, scores = digits_web_scored
    no_logits = scores.drop_columns(["teacher_logits", "student_logits"])
    with pytest.raises(KdataError, match=r"^select: temperature 4: the scores table's statistics were computed at "
                                         r"temperature 1 and it has no teacher_logits/student_logits .*; select at "
                                         r"temperature=1, or score again at 4$"):
        kept(no_logits, ["rad"], 4.0)
    np.testing.assert_array_equal(kept(no_logits, ["rad"], 1.0), kept(scores, ["rad"], 1.0))


def test_a_table_that_records_no_temperature_is_read_as_it_is(digits_web_scored):
    """Statistics of one's own (no recorded temperature) are taken as they are: kdata cannot know theirs."""
    _, scores = digits_web_scored
    unrecorded = scores.replace_schema_metadata(None)
    np.testing.assert_array_equal(kept(unrecorded, ["rad"], 4.0), kept(scores, ["rad"], 1.0))


def test_num_classes_must_be_the_logits_width(digits_web_scored):
    """num_classes=3 over 10-wide logits ran and kept another set."""
    _, scores = digits_web_scored
    logits_only = scores.select(LOGITS_ONLY)
    for table in (scores, logits_only):
        with pytest.raises(KdataError, match=r"^select: num_classes=3, but 'teacher_logits' has 10 values per row$"):
            select(table, methods=["miniplm"], budget=50, num_classes=3)
    for bad in (0, "10", 10.0, True):
        with pytest.raises(KdataError, match=r"^select: num_classes .*: must be an integer ≥ 1"):
            select(logits_only, methods=["kd3"], budget=50, num_classes=bad)
    topk_only = scores.drop_columns(["teacher_logits", "student_logits"])
    with pytest.raises(KdataError, match=r"^select: num_classes=5, but 'teacher_topk_idx' holds class index \d$"):
        select(topk_only, methods=["kd3"], budget=50, num_classes=5)


def test_mismatched_and_ragged_logits_are_one_kdata_error_line():
    """Both raised ValueError from deep inside (logit_stats, list_column)."""
    t = own_table()
    narrow = t.set_column(2, "student_logits", pa.array([[0.0, 1.0]] * 6, pa.list_(pa.float32())))
    with pytest.raises(KdataError, match=r"^select: scores table: teacher_logits has 3 values per row, "
                                         r"student_logits 2 \(logit i must be class i in both\)$"):
        select(narrow, methods=["kd3"], budget=2, num_classes=3)
    rows = [[0.0, 1.0, 2.0]] * 6
    rows[4] = [0.0, 1.0]
    ragged = t.set_column(1, "teacher_logits", pa.array(rows, pa.list_(pa.float32())))
    with pytest.raises(KdataError, match=r"^select: scores table: column 'teacher_logits' has ragged lists "
                                         r"\(row 4 has 2 values, row 0 has 3\)$"):
        select(ragged, methods=["rad"], budget=2, num_classes=3)
    nulls = t.set_column(1, "teacher_logits", pa.array([*rows[:2], None, *rows[3:4], rows[5], rows[5]],
                                                       pa.list_(pa.float32())))
    with pytest.raises(KdataError, match=r"^select: scores table: column 'teacher_logits' is null in row 2$"):
        select(nulls, methods=["rad"], budget=2, num_classes=3)


def test_duplicate_sample_ids_are_refused_naming_one():
    t = own_table(ids=["a", "b", "c", "b", "d", "e"])
    with pytest.raises(KdataError, match=r"^select: sample_id 'b' appears 2 times; sample ids must be unique$"):
        select(t, methods=["kd3"], budget=2, num_classes=3)
    none = own_table().set_column(0, "sample_id", pa.array(["a", None, "c", "d", "e", "f"]))
    with pytest.raises(KdataError, match=r"^select: sample_id is null in row 1"):
        select(none, methods=["kd3"], budget=2, num_classes=3)


def test_a_dataframe_is_refused_naming_the_table_it_needs():
    """select(pandas.DataFrame) failed with AttributeError: 'DataFrame' object has no attribute 'column_names'."""
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame({"sample_id": ["a", "b"], "teacher_logits": [[0.0, 1.0]] * 2, "student_logits": [[1.0, 0.0]] * 2})
    with pytest.raises(KdataError, match=r"^select: scores is a pandas\S*DataFrame, expected a pyarrow\.Table "
                                         r"\(pa\.Table\.from_pandas\(df, preserve_index=False\)\)$"):
        select(df, methods=["kd3"], budget=1, num_classes=2)
    table = pa.Table.from_pandas(df, preserve_index=False)
    assert select(table, methods=["kd3"], budget=1, num_classes=2).kept.sum() == 1


def test_read_only_arrow_logits_select_without_a_torch_warning():
    """A float32 table of one's own (N=500, kd3 + rad) made torch warn "The given NumPy array is not writable"."""
    t = own_table(500, 10, seed=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sel = select(t, methods=["rad"], budget=100, num_classes=10)
        assert select(t, methods=["kd3"], budget=100, num_classes=10).kept.sum() == sel.kept.sum() == 100


def test_available_says_what_it_returns():
    doc = available.__doc__ or ""
    assert "kind" in doc and "ranker" in doc and "select" in doc
    assert {"kd3", "rad", "coverage", "miniplm"} <= set(available())


@pytest.mark.parametrize("temperature", [0, -1.0, float("nan"), float("inf"), "1"])
def test_temperature_must_be_a_finite_positive_number(temperature):
    with pytest.raises(KdataError, match=r"^select: temperature .*: must be a finite number > 0$"):
        select(own_table(), methods=["kd3"], budget=2, num_classes=3, temperature=temperature)
