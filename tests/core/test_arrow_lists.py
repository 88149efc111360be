"""``kdata.core.arrow_lists``: a fixed-width list column as an (n, k) array, every bad row one line."""

import numpy as np
import pyarrow as pa
import pytest

from kdata.core.arrow_lists import ListColumnError, list_matrix, list_width
from kdata.core.errors import KdataError


@pytest.mark.parametrize("type_", [pa.list_(pa.float32()), pa.large_list(pa.float64()), pa.list_(pa.float32(), 2)])
def test_a_list_column_becomes_a_matrix(type_):
    t = pa.table({"x": pa.array([[1, 2], [3, 4], [5, 6]], type_)}).slice(1)
    m = list_matrix(t, "x", where="here")
    assert m.dtype == np.float32 and m.tolist() == [[3, 4], [5, 6]]
    assert list_width(t, "x", where="here") == 2
    assert list_matrix(t.column("x"), "x", where="here", dtype=np.int64, copy=True).flags.writeable


def test_an_empty_column_is_zero_wide():
    assert list_matrix(pa.table({"x": pa.array([], pa.list_(pa.float32()))}), "x", where="here").shape == (0, 0)


@pytest.mark.parametrize("rows, problem, row, line", [
    ([[1, 2], None], "null", 1, "here: column 'x' is null in row 1"),
    ([[1, 2], [1, 2], [3]], "ragged", 2, "here: column 'x' has ragged lists (row 2 has 1 values, row 0 has 2)"),
    ([[1, 2], [1, None]], "null value", 1, "here: column 'x' holds a null value inside the list in row 1"),
])
def test_the_first_bad_row_is_one_line(rows, problem, row, line):
    with pytest.raises(ListColumnError) as e:
        list_matrix(pa.table({"x": pa.array(rows, pa.list_(pa.float32()))}), "x", where="here")
    assert isinstance(e.value, KdataError) and str(e.value) == line
    assert (e.value.problem, e.value.row) == (problem, row)


def test_a_given_width_is_checked():
    with pytest.raises(ListColumnError, match=r"^here: column 'x' has 3 values in row 0, expected 2$") as e:
        list_matrix(pa.table({"x": [[1.0, 2.0, 3.0]]}), "x", where="here", width=2)
    assert (e.value.length, e.value.width) == (3, 2)
