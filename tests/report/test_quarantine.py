"""``kdata.report.quarantine``: the quarantined rows listed by kind of error, a bounded number of them
taken in turn from each kind, with the total, how many are shown and the counts of every kind."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from kdata.dataset.decisions import build_decisions, quarantined_by_reason
from kdata.report.inspect import Run
from kdata.report.quarantine import quarantine_fields, quarantine_listing, quarantined_rows


def _run(quarantined: list[tuple]) -> Run:
    rows = pa.table({"sample_id": pa.array(["k0", "k1"], pa.string())})
    table = build_decisions(rows, decision=["kept", "rejected"], reason=[None, "x"], stage=["select"] * 2,
                            quarantined=quarantined)
    return Run(out=Path("."), manifest={}, decisions=table, shards=None)


def test_rows_are_taken_in_turn_from_each_kind_and_every_row_is_counted():
    # 1,000 bad lines of one kind (their line numbers differ), 3 empty files, 1 of a third kind
    q = [(f"t/{i}", f"undecodable_text: not JSON (line {i})") for i in range(1000)]
    q += [(f"e/{i}", "ValueError: empty image") for i in range(3)] + [("s/0", "symlink outside the pool")]
    run = _run(q)
    lst = quarantine_listing(run, 5)
    assert (lst["total"], lst["shown"], lst["truncated"]) == (1004, 5, True)
    assert lst["by_kind"] == quarantined_by_reason(run.decisions) == {
        "undecodable_text: not JSON": 1000, "ValueError: empty image": 3, "symlink outside the pool": 1}
    assert list(lst["by_kind"]) == ["undecodable_text: not JSON", "ValueError: empty image", "symlink outside the pool"]
    # two rounds over three kinds: kind by kind, most first, each kind's rows in decisions order
    assert [r["sample_id"] for r in lst["rows"]] == ["t/0", "t/1", "e/0", "e/1", "s/0"]
    assert lst["rows"][1] == {"sample_id": "t/1", "error": "undecodable_text: not JSON (line 1)",
                              "kind": "undecodable_text: not JSON"}
    everything = quarantine_listing(run, 5000)
    assert everything["shown"] == 1004 and not everything["truncated"]
    assert [r["sample_id"] for r in everything["rows"]][-4:] == ["e/0", "e/1", "e/2", "s/0"]
    assert quarantine_listing(run, 0)["rows"] == [] and quarantine_listing(run, 0)["by_kind"] == lst["by_kind"]
    assert quarantined_rows(run, 2) == lst["rows"][:1] + [lst["rows"][2]]  # one of each of the two commonest
    f = quarantine_fields(run, 5)
    assert f == {"quarantined": lst["rows"], "quarantined_total": 1004, "quarantined_shown": 5,
                 "quarantined_truncated": True, "quarantined_by_kind": lst["by_kind"]}


def test_a_dataset_with_nothing_quarantined_or_no_decisions_lists_nothing(demo_run):
    from kdata.report.inspect import load_run

    empty = {"rows": [], "total": 0, "shown": 0, "truncated": False, "by_kind": {}}
    assert quarantine_listing(load_run(demo_run)) == empty
    assert quarantine_listing(Run(out=Path("."), manifest={}, decisions=None, shards=None)) == empty
