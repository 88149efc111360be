"""The decisions table: one row per input sample, kept / rejected (with a reason) / quarantined."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from kdata.dataset.schema import KEPT, QUARANTINED, REJECTED


@dataclass
class Decisions:
    """Every input sample's end state. ``counts`` checks n_in == kept + rejected + quarantined."""

    table: pa.Table  # decisions schema

    @property
    def counts(self) -> dict:
        """Rows per decision, rejected rows per reason (``duplicate_of:<id>`` counted as ``duplicate_of``)
        and quarantined rows per kind of error (``quarantine_kind``)."""
        dec = self.table.column("decision").cast(pa.string())
        by = _value_counts(dec)
        reason = self.table.column("reason").cast(pa.string()).filter(pc.equal(dec, REJECTED))
        grouped = pc.if_else(pc.starts_with(reason, "duplicate_of:"), "duplicate_of", reason)
        out = {"n_in": self.table.num_rows, "kept": by.get(KEPT, 0), "rejected": by.get(REJECTED, 0),
               "quarantined": by.get(QUARANTINED, 0),
               "rejected_by_reason": dict(sorted(_value_counts(grouped).items())),
               "quarantined_by_reason": quarantined_by_reason(self.table)}
        check_accounting(out)
        return out


def quarantine_kind(error: str | None) -> str:
    """A quarantine error without what differs from row to row: its trailing bracketed detail (a
    line number, a byte offset, a size, a member name, nested brackets included) cut off, at most
    100 characters. Readers write ``<kind>: <message> (<detail>)``, e.g. ``undecodable_text: no 'text'
    field (line 3)`` → ``undecodable_text: no 'text' field``; the full error stays in the row."""
    e = (error or "unknown error").rstrip()
    if e.endswith(")"):
        depth = 0
        for i in range(len(e) - 1, -1, -1):
            depth += {")": 1, "(": -1}.get(e[i], 0)
            if depth == 0:
                if i > 0 and e[i - 1].isspace() and e[:i].strip():
                    e = e[:i].rstrip()
                break
    return e[:100]


def quarantined_by_reason(decisions: pa.Table) -> dict[str, int]:
    """{``quarantine_kind`` of the error (else the reason): rows} of the quarantined rows, most first."""
    dec = decisions.column("decision").cast(pa.string())
    q = decisions.filter(pc.equal(dec, QUARANTINED))
    col = q.column("error") if "error" in q.column_names else pa.nulls(q.num_rows, pa.string())
    why = pc.coalesce(col.cast(pa.string()), q.column("reason").cast(pa.string()))
    kinds: dict[str, int] = {}
    for e, n in _value_counts(why).items():
        k = quarantine_kind(e)
        kinds[k] = kinds.get(k, 0) + n
    return dict(sorted(kinds.items(), key=lambda kv: (-kv[1], kv[0])))


def _value_counts(col) -> dict:
    """{value: rows} of a string column (null: None), counted in Arrow rather than a Python loop."""
    vc = pc.value_counts(col)
    return dict(zip(vc.field("values").to_pylist(), vc.field("counts").to_pylist()))


def check_accounting(counts: dict) -> None:
    total = counts["kept"] + counts["rejected"] + counts["quarantined"]
    if total != counts["n_in"]:
        raise RuntimeError(f"accounting broken: n_in={counts['n_in']} but kept+rejected+quarantined={total}")
    if sum(counts.get("rejected_by_reason", {}).values()) != counts["rejected"]:
        raise RuntimeError("accounting broken: rejection reasons do not add up to the rejected count")
    if "quarantined_by_reason" in counts and sum(counts["quarantined_by_reason"].values()) != counts["quarantined"]:
        raise RuntimeError("accounting broken: quarantine reasons do not add up to the quarantined count")


CARRIED = ("label_idx", "teacher_pred", "student_pred", "teacher_conf", "kl_ts")
# causal-LM text runs: the sequence NLLs of every scored row (the card's pool perplexity quantiles)
CARRIED += ("teacher_nll", "student_nll", "reference_nll")


def build_decisions(rows: pa.Table, *, decision, reason, stage, class_names: list[str] | None = None,
                    scores: dict | None = None, quarantined: list[tuple] = ()) -> pa.Table:
    """The decisions table of any run: one row per row of ``rows``, then one per quarantined sample.

    ``decision``/``reason``/``stage`` are per-row sequences; the rows' labels and predictions are
    carried along (``label`` from ``label`` or from ``label_idx`` and ``class_names``), plus
    per-method ``scores`` as float32 columns. Quarantined samples are ``(sample_id, error)`` or
    ``(sample_id, error, label)``: they get ``reason = unreadable``, their error and, where the pool
    reader knew it (an ImageFolder's folder name), their web ``label`` and ``label_idx``.
    """
    n = rows.num_rows
    cols = {"sample_id": rows.column("sample_id"),
            "decision": _strings(decision), "reason": _strings(reason), "stage": _strings(stage),
            "error": pa.nulls(n, pa.string())}
    if "label" in rows.column_names:
        cols["label"] = rows.column("label").cast(pa.string())
    elif "label_idx" in rows.column_names and class_names:
        idx = rows.column("label_idx").to_numpy(zero_copy_only=False)
        idx = np.where(np.isnan(idx.astype(float)), -1, idx).astype(np.int64) if idx.dtype.kind == "f" else idx
        names = np.asarray(list(class_names) + [None], dtype=object)
        cols["label"] = pa.array(names[np.where((idx >= 0) & (idx < len(class_names)), idx, len(class_names))],
                                 pa.string())
    for name in CARRIED:
        if name in rows.column_names:
            cols[name] = rows.column(name)
    for name, arr in (scores or {}).items():
        cols[name] = pa.array(arr, pa.float32())
    table = pa.table(cols)
    if not quarantined:
        return table
    q = len(quarantined)
    labels = [e[2] if len(e) > 2 else None for e in quarantined]
    qt = {"sample_id": pa.array([e[0] for e in quarantined], pa.string()),
          "decision": pa.array([QUARANTINED] * q, pa.string()),
          "reason": pa.array(["unreadable"] * q, pa.string()),
          "stage": pa.array(["score"] * q, pa.string()),
          "error": pa.array([e[1] for e in quarantined], pa.string())}
    if any(v is not None for v in labels):
        index = {c: i for i, c in enumerate(class_names or ())}  # a label the classes lack: −1, as when scored
        qt["label"] = pa.array(labels, pa.string())
        qt["label_idx"] = pa.array([None if v is None else index.get(v, -1) for v in labels],
                                   table.schema.field("label_idx").type if "label_idx" in cols else pa.int32())
    return pa.concat_tables([table, pa.table(qt)], promote_options="default")


def _strings(values) -> pa.Array:
    """A per-row sequence as a string array: numpy arrays and lists converted as they are, in C (no
    Python list of a million ``str`` built first)."""
    return pa.array(values if isinstance(values, (np.ndarray, list)) else list(values), pa.string())
