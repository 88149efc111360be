"""The decisions table: one row per input sample, kept / rejected (with a reason) / quarantined."""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from kdata.dataset.schema import KEPT, QUARANTINED, REJECTED


@dataclass
class Decisions:
    """Every input sample's end state. ``counts`` checks n_in == kept + rejected + quarantined."""

    table: pa.Table  # decisions schema

    @property
    def counts(self) -> dict:
        dec = self.table.column("decision").to_pylist()
        reasons: dict[str, int] = {}
        for d, r in zip(dec, self.table.column("reason").to_pylist()):
            if d == REJECTED:
                key = r.split(":", 1)[0] if r and r.startswith("duplicate_of:") else r
                reasons[key] = reasons.get(key, 0) + 1
        out = {"n_in": len(dec), "kept": dec.count(KEPT), "rejected": dec.count(REJECTED),
               "quarantined": dec.count(QUARANTINED), "rejected_by_reason": dict(sorted(reasons.items()))}
        check_accounting(out)
        return out



def check_accounting(counts: dict) -> None:
    total = counts["kept"] + counts["rejected"] + counts["quarantined"]
    if total != counts["n_in"]:
        raise RuntimeError(f"accounting broken: n_in={counts['n_in']} but kept+rejected+quarantined={total}")
    if sum(counts.get("rejected_by_reason", {}).values()) != counts["rejected"]:
        raise RuntimeError("accounting broken: rejection reasons do not add up to the rejected count")
