"""The quarantined rows of a curated dataset read back (``kdata.report.inspect.Run``): the rows
themselves, and how many there are of each kind of error."""

from __future__ import annotations

import pyarrow.compute as pc

from kdata.dataset.decisions import quarantined_by_reason
from kdata.dataset.schema import QUARANTINED


def quarantined_rows(run, limit: int = 50) -> list[dict]:
    """The first ``limit`` quarantined rows: sample id and the full error (line numbers and all)."""
    if run.decisions is None:
        return []
    d = run.decisions
    q = d.filter(pc.equal(d.column("decision"), QUARANTINED)).select(["sample_id", "error"]).slice(0, limit)
    return q.to_pylist()


def quarantine_kinds(run) -> dict[str, int]:
    """Quarantined rows per kind of error (``kdata.dataset.decisions.quarantine_kind``, most first): the
    manifest's ``quarantined_by_reason``, else (a dataset written before the manifest had it) counted
    from the decisions table, else empty."""
    stated = (run.manifest.get("counts") or {}).get("quarantined_by_reason")
    if isinstance(stated, dict):
        return dict(stated)
    if run.decisions is None or "decision" not in run.decisions.column_names:
        return {}
    return quarantined_by_reason(run.decisions)
