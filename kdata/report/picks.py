"""Which rows the card's thumbnails and the HTML report show.

The best-ranked kept rows alone are not representative: a ranker that prefers informative rows
(RAD, uncertainty, disagreement) puts ambiguous and junk-like inputs first. So the card shows them
*and* a random sample of the kept rows of each class, plus the most clearly rejected rows per
reason; the report shows a bounded random sample of every decision and reason. "Random" is a
permanent number per sample (a seeded hash of its ``sample_id``), so the same run always shows the
same rows and ``kdata card DIR`` regenerates the same bytes.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from kdata.dataset.schema import KEPT, QUARANTINED, REJECTED
from kdata.report.inspect import Run, pick_rejected, primary_score

__all__ = ["best_kept", "id_uniform", "random_kept_by_class", "rejected_picks", "report_sample", "run_seed"]


def id_uniform(ids, *, seed: int, salt: str) -> np.ndarray:
    """A uniform [0, 1) number per id from (seed, salt, id): independent of row order."""
    import pandas as pd

    key = hashlib.md5(f"{seed}:{salt}".encode()).hexdigest()[:16]
    h = pd.util.hash_array(np.asarray(ids, dtype=object), hash_key=key, categorize=False)
    return (h >> np.uint64(11)).astype(np.float64) / 2.0 ** 53


def run_seed(run: Run) -> int:
    m = run.manifest
    seed = m.get("seed", (m.get("config") or {}).get("seed"))
    return int(seed) if isinstance(seed, (int, float)) else 0


def _cols(t: pa.Table, want: tuple[str, ...]) -> list[str]:
    return [c for c in want if c in t.column_names]


def best_kept(run: Run, n: int) -> list[dict]:
    """The ``n`` best-ranked kept rows (shards order when there is no ``rank``)."""
    t = run.shards
    if t is None or n <= 0:
        return []
    t = t.select(_cols(t, ("sample_id", "rank", "teacher_pred", "teacher_conf")))  # before sorting: no copy of the rest
    return (t.sort_by("rank") if "rank" in t.column_names else t).slice(0, n).to_pylist()


def random_kept_by_class(run: Run, *, per_class: int, max_classes: int, exclude=()) -> list[dict]:
    """Up to ``per_class`` random kept rows of each teacher-predicted class, in class order.

    With more than ``max_classes`` classes, the classes with the most kept rows are shown. Rows in
    ``exclude`` (already pictured as best-ranked) are skipped.
    """
    t = run.shards
    if t is None or "teacher_pred" not in t.column_names or per_class <= 0 or not t.num_rows:
        return []
    ids = np.asarray(t.column("sample_id").to_pylist(), dtype=object)
    cls = t.column("teacher_pred").fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    u = id_uniform(ids, seed=run_seed(run), salt="card-kept-by-class")
    u[np.isin(ids, list(exclude))] = np.inf
    classes, counts = np.unique(cls, return_counts=True)
    shown = sorted(classes[np.lexsort((classes, -counts))][:max_classes].tolist())
    conf = _cols(t, ("teacher_conf",))
    rows = []
    for c in shown:
        idx = np.flatnonzero((cls == c) & np.isfinite(u))
        idx = idx[np.lexsort((ids[idx], u[idx]))][:per_class]
        sub = t.select(["sample_id", "teacher_pred"] + conf).take(pa.array(idx, pa.int64())).to_pylist()
        rows += [{**r, "random": True} for r in sub]
    return rows


def rejected_picks(run: Run, n: int) -> list[dict]:
    """The ``n`` most clearly rejected rows, round-robin over the rejection reasons, with ``score``."""
    if run.decisions is None:
        return []
    picks = pick_rejected(run, n)
    col = primary_score(run)
    cols = ["sample_id", "reason", "teacher_pred"] + ([col] if col else [])
    rows = run.decisions.select(cols).take(pa.array(picks, pa.int64())).to_pylist() if picks else []
    for r in rows:
        r["score"] = r.get(col) if col else None
    return rows


def _num(v, nd: int = 4):
    if v is None:
        return None
    v = float(v)
    return None if not np.isfinite(v) else round(v, nd)


def _group_array(dec: pa.Table) -> pa.Array:
    """Per decisions row: ``kept``, ``quarantined`` or the grouped rejection reason (``inspect.reason_group``,
    in Arrow: the reason up to its first ``:``, ``none`` for a null one)."""
    d = dec.column("decision").cast(pa.string())
    reason = dec.column("reason").cast(pa.string()) if "reason" in dec.column_names \
        else pa.nulls(dec.num_rows, pa.string())
    grouped = pc.fill_null(pc.replace_substring_regex(reason, pattern="(?s):.*", replacement=""), "none")
    return pc.if_else(pc.equal(d, REJECTED), grouped, d).combine_chunks()


def _groups(dec: pa.Table) -> np.ndarray:
    """``_group_array`` as an object array."""
    return _group_array(dec).to_numpy(zero_copy_only=False)


def report_sample(run: Run, *, per_group: int, max_rows: int) -> list[dict]:
    """A bounded sample of decisions rows for the report: up to ``per_group`` random rows of each
    group (kept, each grouped rejection reason, quarantined), fewer when the groups are many, so the
    page stays under ``max_rows`` rows whatever the pool size."""
    dec = run.decisions
    if dec is None:  # a dataset without a decisions table: its kept rows only
        if run.shards is None:
            return []
        dec = run.shards.append_column("decision", pa.array([KEPT] * run.shards.num_rows, pa.string()))
    enc = pc.dictionary_encode(_group_array(dec), null_encoding="encode")  # one code per group, no object sort
    codes, names = enc.indices.to_numpy(zero_copy_only=False), enc.dictionary.to_pylist()
    order = sorted(zip(names, np.bincount(codes, minlength=len(names)).tolist(), range(len(names))),
                   key=lambda g: (g[0] != KEPT, g[0] == QUARANTINED, -g[1], g[0]))
    per = max(1, min(per_group, max_rows // max(1, len(order))))
    ids = dec.column("sample_id").to_numpy(zero_copy_only=False)
    u = id_uniform(ids, seed=run_seed(run), salt="report")
    take: list[int] = []
    for _, _, code in order:
        take += _first(np.flatnonzero(codes == code), u, ids, per)
    col = primary_score(run)
    want = ("sample_id", "decision", "reason", "error", "label", "label_idx", "teacher_pred", "student_pred",
            "teacher_conf", "kl_ts") + ((col,) if col else ())
    rows = dec.select(_cols(dec, want)).take(pa.array(take, pa.int64())).to_pylist()
    ranks = _kept_ranks(run, [r["sample_id"] for r in rows if r["decision"] == KEPT])
    out = []
    for r, g in zip(rows, [names[c] for c in codes[take]]):
        li = r.get("label_idx")
        label = r.get("label") or (run.class_name(li) if li is not None and li >= 0 else None)
        out.append({"id": r["sample_id"], "decision": r["decision"], "group": g,
                    "reason": r.get("reason") or (r.get("error") if r["decision"] == QUARANTINED else None),
                    "cls": run.class_name(r.get("teacher_pred")) if r.get("teacher_pred") is not None else None,
                    "student": run.class_name(r.get("student_pred")) if r.get("student_pred") is not None else None,
                    "label": label, "score": _num(r.get(col)) if col else None,
                    "conf": _num(r.get("teacher_conf")), "kl": _num(r.get("kl_ts")),
                    "rank": ranks.get(r["sample_id"])})
    # within a group: best-ranked kept first, most clearly rejected (lowest score) first
    pos = {name: i for i, (name, _, _) in enumerate(order)}
    inf = float("inf")
    return sorted(out, key=lambda r: (pos[r["group"]], inf if r["rank"] is None else r["rank"],
                                      inf if r["score"] is None else r["score"], r["id"]))


def _first(idx: np.ndarray, u: np.ndarray, ids: np.ndarray, k: int) -> list[int]:
    """The ``k`` rows of ``idx`` with the smallest (``u``, ``ids``): the rows with one of the ``k``
    smallest ``u`` (ties included) sorted, not the whole group."""
    if len(idx) > k:
        idx = idx[u[idx] <= np.partition(u[idx], k - 1)[k - 1]]
    return idx[np.lexsort((ids[idx], u[idx]))][:k].tolist()


def _kept_ranks(run: Run, ids: list[str]) -> dict[str, int]:
    t = run.shards
    if t is None or not ids or "rank" not in t.column_names:
        return {}
    t = t.filter(pc.is_in(t.column("sample_id"), value_set=pa.array(ids, pa.string()))).select(["sample_id", "rank"])
    return {r["sample_id"]: r["rank"] for r in t.to_pylist()}
