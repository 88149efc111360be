"""The quarantined rows of a curated dataset read back (``kdata.report.inspect.Run``): the rows
themselves, and how many there are of each kind of error."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from kdata.dataset.decisions import quarantine_kind, quarantined_by_reason
from kdata.dataset.schema import QUARANTINED

MAX_LISTED = 50  # quarantined rows ``kdata inspect`` lists by default (``--quarantined N``)


def quarantined_rows(run, limit: int = MAX_LISTED) -> list[dict]:
    """Up to ``limit`` quarantined rows (``quarantine_listing``): sample id, the full error (line
    numbers and all) and its ``kind``."""
    return quarantine_listing(run, limit)["rows"]


def quarantine_listing(run, limit: int = MAX_LISTED) -> dict:
    """The quarantined rows grouped by kind of error (``quarantine_kind``, most first).

    ``rows``: up to ``limit`` rows, taken in turn from each kind (so every kind has an example
    before any has two), listed kind by kind in decisions order; ``total``, ``shown``,
    ``truncated`` (rows left out) and ``by_kind`` ({kind: rows}, every row counted)."""
    d = run.decisions
    if d is None or "decision" not in d.column_names:
        return {"rows": [], "total": 0, "shown": 0, "truncated": False, "by_kind": {}}
    q = d.filter(pc.equal(d.column("decision").cast(pa.string()), QUARANTINED))
    if not q.num_rows:
        return {"rows": [], "total": 0, "shown": 0, "truncated": False, "by_kind": {}}
    err = q.column("error").cast(pa.string()) if "error" in q.column_names else pa.nulls(q.num_rows, pa.string())
    why = pc.coalesce(err, q.column("reason").cast(pa.string())) if "reason" in q.column_names else err
    enc = pc.dictionary_encode(why, null_encoding="encode").combine_chunks()  # one kind per distinct error
    codes = enc.indices.to_numpy(zero_copy_only=False)
    kinds = [quarantine_kind(e) for e in enc.dictionary.to_pylist()]
    names = sorted(set(kinds))
    at = {k: i for i, k in enumerate(names)}
    kind_idx = np.array([at[k] for k in kinds], dtype=np.int64)[codes]
    counts = np.bincount(kind_idx, minlength=len(names))
    order = sorted(range(len(names)), key=lambda k: (-counts[k], names[k]))
    by_kind = np.split(np.argsort(kind_idx, kind="stable"), np.cumsum(counts)[:-1])  # rows of each kind, in order
    members = [by_kind[k] for k in order]
    take = _round_robin(members, max(0, limit))
    idx = [i for m, n in zip(members, take) for i in m[:n].tolist()]
    rows = q.select(["sample_id"]).take(pa.array(idx, pa.int64())).to_pylist()
    errors = err.take(pa.array(idx, pa.int64())).to_pylist()
    kind_of = [names[kind_idx[i]] for i in idx]
    listed = [{"sample_id": r["sample_id"], "error": e, "kind": k} for r, e, k in zip(rows, errors, kind_of)]
    return {"rows": listed, "total": q.num_rows, "shown": len(listed), "truncated": len(listed) < q.num_rows,
            "by_kind": {names[k]: int(counts[k]) for k in order}}


def _round_robin(groups: list, limit: int) -> list[int]:
    """How many of each group to take, one from each in turn, ``limit`` in all (level by level: as many
    rounds at once as the smallest group not yet exhausted allows)."""
    take, left = [0] * len(groups), limit
    while left > 0:
        active = [j for j, g in enumerate(groups) if take[j] < len(g)]
        if not active:
            break
        rounds = min(min(len(groups[j]) - take[j] for j in active), left // len(active))
        if rounds == 0:  # fewer rows left to give than groups: one each to the first ones
            for j in active[:left]:
                take[j] += 1
            break
        for j in active:
            take[j] += rounds
        left -= rounds * len(active)
    return take


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


def quarantine_fields(run, limit: int = MAX_LISTED) -> dict:
    """The quarantine keys of ``kdata inspect --json``: ``quarantined`` (up to ``limit`` rows, as
    ``quarantine_listing`` picks them), ``quarantined_total``, ``quarantined_shown``,
    ``quarantined_truncated`` and ``quarantined_by_kind``."""
    q = quarantine_listing(run, limit)
    return {"quarantined": q["rows"], "quarantined_total": q["total"], "quarantined_shown": q["shown"],
            "quarantined_truncated": q["truncated"], "quarantined_by_kind": q["by_kind"]}
