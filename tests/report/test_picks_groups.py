"""The report's decision groups and per-group random rows, computed in Arrow and with a partial sort:
the same groups as ``reason_group`` row by row and the same rows as sorting each whole group."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from kdata.report.inspect import Run, reason_group
from kdata.report.picks import _first, _groups, id_uniform, report_sample


def _decisions(n: int, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    reasons = ["rad_over_budget", "duplicate_of:s1", "coverage_tail", "a:b\nc:d", ":x", None]
    dec = rng.choice(["kept", "rejected", "rejected", "quarantined"], n).tolist()
    reason = [None if d == "kept" else reasons[i] for d, i in zip(dec, rng.integers(0, len(reasons), n))]
    t = pa.table({"sample_id": [f"s{i:05d}" for i in range(n)], "decision": dec, "reason": reason,
                  "teacher_conf": rng.random(n).astype(np.float32)})
    return pa.concat_tables([t.slice(0, n // 3), t.slice(n // 3)])


def test_groups_equal_reason_group_row_by_row():
    t = _decisions(3000)
    want = [reason_group(r) if d == "rejected" else d
            for d, r in zip(t.column("decision").to_pylist(), t.column("reason").to_pylist())]
    got = _groups(t)
    assert got.dtype == object and got.tolist() == want
    assert "a" in want and "" in want  # "a:b\nc:d" → "a", ":x" → ""
    assert _groups(t.drop_columns(["reason"])).tolist() == [d if d != "rejected" else "none"
                                                             for d in t.column("decision").to_pylist()]


def test_first_rows_equal_sorting_the_whole_group():
    rng = np.random.default_rng(1)
    ids = np.array([f"s{i:04d}" for i in rng.permutation(2000)], dtype=object)
    u = np.round(rng.random(2000), 2)  # many ties: decided by the id
    for k in (1, 5, 24, 3000):
        idx = np.flatnonzero(rng.random(2000) < 0.4)
        assert _first(idx, u, ids, k) == idx[np.lexsort((ids[idx], u[idx]))][:k].tolist()


def test_report_sample_takes_the_smallest_permanent_numbers_of_each_group():
    t = _decisions(3000)
    run = Run(out=Path("."), manifest={"seed": 3}, decisions=t, shards=None)
    rows = report_sample(run, per_group=7, max_rows=400)
    groups = _groups(t)
    ids = np.array(t.column("sample_id").to_pylist(), dtype=object)
    u = id_uniform(ids, seed=3, salt="report")
    for g in set(groups.tolist()):
        idx = np.flatnonzero(groups == g)
        want = set(ids[idx[np.lexsort((ids[idx], u[idx]))][:7]].tolist())
        assert {r["id"] for r in rows if r["group"] == g} == want
    assert len(rows) == 7 * len(set(groups.tolist()))
