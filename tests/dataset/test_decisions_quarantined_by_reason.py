"""``Decisions.counts`` gives ``quarantined_by_reason`` beside ``rejected_by_reason``: quarantined
rows per kind of error (the trailing bracketed detail of each error left out), adding up to
``quarantined``."""

from __future__ import annotations

import pyarrow as pa
import pytest

from kdata.dataset.decisions import Decisions, build_decisions, check_accounting, quarantine_kind


@pytest.mark.parametrize(("error", "kind"), [
    ("undecodable_text: no 'text' field (line 3)", "undecodable_text: no 'text' field"),
    ("undecodable_text: not JSON (line 8: Expecting value: line 1 column 1 (char 0))", "undecodable_text: not JSON"),
    ("too_long: over 40 chars (50 chars)", "too_long: over 40 chars"),
    ("empty_text", "empty_text"),
    ("(all in brackets)", "(all in brackets)"),  # nothing would be left: kept whole
    ("unbalanced detail)", "unbalanced detail)"),
    (None, "unknown error"),
    ("x" * 150, "x" * 100),
])
def test_quarantine_kind(error, kind):
    assert quarantine_kind(error) == kind


def test_counts_group_quarantine_errors_by_kind():
    rows = pa.table({"sample_id": ["k", "r"]})
    q = [(f"q{i}", f"undecodable_text: no 'text' field (line {2 * i + 1})") for i in range(10)]
    q += [("e", "empty_text"), ("t", "too_long: over 40 chars (50 chars)")]
    table = build_decisions(rows, decision=["kept", "rejected"], reason=[None, "kd3_low_confidence"],
                            stage=["select", "select"], quarantined=q)
    c = Decisions(table).counts
    assert c["quarantined"] == 12 and c["n_in"] == 14
    assert c["quarantined_by_reason"] == {"undecodable_text: no 'text' field": 10, "empty_text": 1,
                                          "too_long: over 40 chars": 1}
    assert list(c["quarantined_by_reason"])[0] == "undecodable_text: no 'text' field"  # most first
    assert c["rejected_by_reason"] == {"kd3_low_confidence": 1}
    # every row keeps its own error: the line numbers are still there
    errors = table.filter(pa.compute.equal(table.column("decision"), "quarantined")).column("error").to_pylist()
    assert errors[:2] == ["undecodable_text: no 'text' field (line 1)", "undecodable_text: no 'text' field (line 3)"]


def test_counts_without_quarantine_and_the_accounting_check():
    c = Decisions(build_decisions(pa.table({"sample_id": ["a"]}), decision=["kept"], reason=[None],
                                  stage=["select"])).counts
    assert c["quarantined_by_reason"] == {}
    check_accounting({"n_in": 1, "kept": 1, "rejected": 0, "quarantined": 0})  # an old manifest's counts
    with pytest.raises(RuntimeError, match="quarantine reasons do not add up"):
        check_accounting({"n_in": 2, "kept": 1, "rejected": 0, "quarantined": 1, "quarantined_by_reason": {}})
