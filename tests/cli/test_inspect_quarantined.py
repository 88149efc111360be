"""``kdata inspect`` keeps ``kdata select``'s promise "kdata inspect OUT lists each": the quarantined
rows grouped by kind of error with their counts, every row listed up to ``--quarantined N`` (taken in
turn from each kind), and a line saying how many are not listed; ``--json`` adds the total, how many
are shown, whether the list is truncated and the counts by kind (``quarantined`` keeps its shape)."""

from __future__ import annotations

import json
import re

import pytest

from kdata.cli import main
from tests.report.messy_pool import messy_run


@pytest.fixture(scope="module")
def run(tmp_path_factory, builtin_models):
    return messy_run(tmp_path_factory.mktemp("messy-inspect"))


def _inspect(capsys, *args: str) -> tuple[int, str]:
    capsys.readouterr()
    rc = main(["inspect", *args])
    return rc, capsys.readouterr().out


def _listed(text: str) -> list[str]:
    """The sample ids of the listed quarantined rows (``    <id>: <error>`` lines)."""
    return re.findall(r"^    (\d/\S+): ", text, re.MULTILINE)


def test_inspect_lists_every_kind_and_every_row_that_select_sends_it_to(run, capsys):
    out, bad, summary = run
    manifest = json.loads((out / "manifest.json").read_text())
    kinds = manifest["counts"]["quarantined_by_reason"]
    assert manifest["counts"]["quarantined"] == len(bad) == 15 and len(kinds) == 5
    assert f"other kind(s) of error: 2 (kdata inspect {out} lists each)" in summary  # the promise
    rc, text = _inspect(capsys, str(out), "--examples", "0")
    assert rc == 0
    assert f"quarantined by kind of error (15 rows, 5 kind(s))" in text
    for kind, n in kinds.items():  # every kind with its count, in the table and above its rows
        assert re.search(rf"│ {re.escape(kind)} +│ +{n} │ +{n} │", text), kind
        assert f"  {kind} — {n} row(s):" in text
    assert sorted(_listed(text)) == sorted(bad)  # 15 rows, under the default cap of 50: each one
    assert "not listed" not in text


def test_quarantined_caps_the_rows_listed_and_says_how_many_are_not(run, capsys):
    out, bad, _ = run
    rc, text = _inspect(capsys, str(out), "--quarantined", "4", "--examples", "0")
    assert rc == 0
    listed = _listed(text)
    assert len(listed) == 4 and set(listed) <= set(bad)
    assert "  … and 11 more quarantined row(s) not listed (--quarantined 15 lists them all; " in text
    # the first four come one from each of the four commonest kinds, not four of the commonest
    assert len({bad[i] for i in listed}) == 4
    rc, text = _inspect(capsys, str(out), "--quarantined", "0", "--examples", "0")
    assert _listed(text) == [] and "… and 15 more quarantined row(s) not listed" in text
    assert "│ ValueError: empty image" in text  # the counts by kind stay whole
    assert main(["inspect", str(out), "--quarantined", "-1"]) == 2
    assert "--quarantined -1: must be a whole number ≥ 0" in capsys.readouterr().err


def test_json_says_how_many_rows_it_lists_of_how_many_and_counts_every_kind(run, capsys):
    out, bad, _ = run
    kinds = json.loads((out / "manifest.json").read_text())["counts"]["quarantined_by_reason"]
    rc, text = _inspect(capsys, str(out), "--json")
    s = json.loads(text)
    assert rc == 0 and len(s["quarantined"]) == 15 and {q["sample_id"] for q in s["quarantined"]} == set(bad)
    assert (s["quarantined_total"], s["quarantined_shown"], s["quarantined_truncated"]) == (15, 15, False)
    assert s["quarantined_by_kind"] == kinds == s["decisions"]["quarantined_by_reason"]
    assert all(q["error"] and q["error"].startswith(q["kind"]) for q in s["quarantined"])
    rc, text = _inspect(capsys, str(out), "--json", "--quarantined", "3")
    s = json.loads(text)
    assert len(s["quarantined"]) == s["quarantined_shown"] == 3 and s["quarantined_truncated"] is True
    assert s["quarantined_total"] == 15 and s["quarantined_by_kind"] == kinds  # counts cover every row
    most_first = sorted(kinds, key=lambda k: (-kinds[k], k))  # (JSON objects are printed with sorted keys)
    assert [q["kind"] for q in s["quarantined"]] == most_first[:3]  # one of each of the commonest kinds
