"""The decisions table's counts and construction, done in Arrow: the same numbers as counting row by row,
whatever the chunking, reasons with ``:`` or line breaks, and the sequence types the runs pass."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from kdata.dataset.decisions import Decisions, build_decisions, quarantine_kind

REASONS = ["rad_over_budget", "duplicate_of:s1", "duplicate_of:s2:x", "a:b\nc", "unreadable", None, "dup:of"]


def _table(n: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    dec = rng.choice(["kept", "rejected", "quarantined"], n)
    reason = [None if d == "kept" else REASONS[i] for d, i in zip(dec, rng.integers(0, len(REASONS) - 1, n))]
    reason = [r if r is not None or d != "rejected" else "filter_reject" for d, r in zip(dec, reason)]
    t = pa.table({"sample_id": [f"s{i}" for i in range(n)], "decision": dec.tolist(), "reason": reason})
    half = n // 2
    return pa.concat_tables([t.slice(0, half), t.slice(half)])  # two chunks


def _by_rows(t: pa.Table) -> dict:
    dec, reasons = t.column("decision").to_pylist(), t.column("reason").to_pylist()
    by: dict = {}
    q: dict = {}  # no error column here: a quarantined row's kind comes from its reason
    for d, r in zip(dec, reasons):
        if d == "rejected":
            key = r.split(":", 1)[0] if r and r.startswith("duplicate_of:") else r
            by[key] = by.get(key, 0) + 1
        elif d == "quarantined":
            q[quarantine_kind(r)] = q.get(quarantine_kind(r), 0) + 1
    return {"n_in": len(dec), "kept": dec.count("kept"), "rejected": dec.count("rejected"),
            "quarantined": dec.count("quarantined"), "rejected_by_reason": dict(sorted(by.items())),
            "quarantined_by_reason": q}


def test_counts_equal_a_row_by_row_count():
    for n, seed in ((0, 0), (1, 1), (7, 2), (5000, 3)):
        t = _table(n, seed)
        assert Decisions(t).counts == _by_rows(t)
    assert Decisions(_table(5000, 3)).counts["rejected_by_reason"]["duplicate_of"] > 0


def test_build_decisions_from_numpy_lists_and_iterables():
    rows = pa.table({"sample_id": ["a", "b", "c"]})
    dec, reason, stage = ["kept", "rejected", "rejected"], [None, "x:1", "é"], [None, "rad", "rad"]
    want = build_decisions(rows, decision=dec, reason=reason, stage=stage)
    for conv in (np.array, lambda v: np.array(v, dtype=object), iter, tuple):
        got = build_decisions(rows, decision=conv(dec), reason=np.array(reason, dtype=object), stage=conv(stage))
        assert got.equals(want) and got.column("reason").to_pylist() == reason
    assert want.schema.field("decision").type == pa.string() and want.column("stage").null_count == 1
