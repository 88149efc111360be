"""kdata.core.ids.member_mask: the same mask as ``pc.is_in``, for chunked and plain columns."""

import pyarrow as pa
import pyarrow.compute as pc

from kdata.core.ids import member_mask


def test_member_mask_is_is_in():
    wanted = ["a", "c", "x:1", ""]
    for ids in (pa.array(["a", "b", None, "c", "", "x:1", "x:2"]),
                pa.chunked_array([["a", "b"], [None, "c", "", "x:1"], []])):
        got = member_mask(ids, set(wanted))
        assert got.to_pylist() == pc.is_in(ids, value_set=pa.array(wanted)).to_pylist()
    assert member_mask(pa.array([], pa.string()), {"a"}).to_pylist() == []
