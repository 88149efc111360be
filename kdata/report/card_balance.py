"""Class balance before and after curation, for the card's table and plot, ``report.html`` and ``kdata inspect``.

One population per column: the pool's scored samples (web label, teacher prediction; from
``decisions.parquet``), the *kept* input samples (the shards' rows that have a decision) and, apart
from them, the rows HARD generated from the kept ones (``generated_rows``). Generated rows are no
input sample: counting them as kept would make a class hold more kept rows than the pool had.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from kdata.dataset.integrity import SYNTHETIC
from kdata.dataset.schema import QUARANTINED

__all__ = ["MAX_BALANCE_ROWS", "balance_highlights", "class_balance", "generated_rows"]

MAX_BALANCE_ROWS = 40  # above this many classes, summaries show the classes that moved most


def generated_rows(run) -> np.ndarray:
    """Which rows of ``run.shards`` (a ``kdata.report.inspect.Run``) the run generated (HARD):
    ``kind`` synthetic and no decision of their own. Synthetic rows *with* a decision are input
    samples (``kdata generate``; an augmented dataset deduplicated or augmented again)."""
    s = run.shards
    if s is None or "kind" not in s.column_names:
        return np.zeros(0 if s is None else s.num_rows, bool)
    synth = pc.fill_null(pc.equal(s.column("kind"), SYNTHETIC), False)
    if run.decisions is not None:
        decided = pc.is_in(s.column("sample_id"), value_set=run.decisions.column("sample_id").combine_chunks())
        synth = pc.and_(synth, pc.invert(decided))
    return np.asarray(synth.combine_chunks().to_numpy(zero_copy_only=False), bool)


def _ints(t: pa.Table, name: str) -> tuple[np.ndarray, np.ndarray]:
    """A nullable integer column as (values with nulls as −1, non-null mask)."""
    ok = ~t.column(name).is_null().to_numpy(zero_copy_only=False)
    v = t.column(name).to_numpy(zero_copy_only=False)
    return np.where(ok, v, -1).astype(np.int64), ok


def _counts(v: np.ndarray, n_cls: int) -> np.ndarray:
    return np.bincount(v[v >= 0], minlength=n_cls)


def class_balance(run) -> list[dict]:
    """Per class: web label and teacher prediction over the pool's scored samples, teacher prediction
    over the kept samples (``kept_teacher``) and over the generated rows (``generated_teacher``;
    None for every class when the run generated none)."""
    n_cls = len(run.class_names)
    pool_label = pool_pred = kept = gen = None
    if run.decisions is not None:
        scored = run.decisions.filter(pc.not_equal(run.decisions.column("decision"), QUARANTINED))
        if "label_idx" in scored.column_names:
            li, _ = _ints(scored, "label_idx")
            pool_label = _counts(li, n_cls) if (li >= 0).any() else None
        pool_pred = _counts(_ints(scored, "teacher_pred")[0], n_cls)
    if run.shards is not None:
        tp, g = _ints(run.shards, "teacher_pred")[0], generated_rows(run)
        kept = _counts(tp[~g], n_cls)
        gen = _counts(tp[g], n_cls) if g.any() else None
    n = max([len(x) for x in (pool_label, pool_pred, kept, gen) if x is not None] + [n_cls])
    rows = []
    for i in range(n):
        get = (lambda a: int(a[i]) if a is not None and i < len(a) else None)
        rows.append({"class": run.class_name(i), "pool_label": get(pool_label), "pool_teacher": get(pool_pred),
                     "kept_teacher": get(kept), "generated_teacher": get(gen)})
    return rows


def balance_highlights(bal: list[dict], *, limit: int = MAX_BALANCE_ROWS) -> tuple[list[dict], str | None]:
    """The class-balance rows worth printing: all of them up to ``limit`` classes; above that the
    ``limit`` classes whose share of kept rows moved most against the pool (teacher prediction, in
    class order) and a one-line summary of the spread. A table of thousands of classes says less."""
    tot_k = sum(r["kept_teacher"] or 0 for r in bal)
    tot_p = sum(r["pool_teacher"] or 0 for r in bal)
    if len(bal) <= limit or not tot_k or not tot_p:
        return bal, None
    kept = np.array([r["kept_teacher"] or 0 for r in bal], np.float64) / tot_k
    pool = np.array([r["pool_teacher"] or 0 for r in bal], np.float64) / tot_p
    order = np.argsort(kept - pool, kind="stable")
    shown = [bal[i] for i in sorted(set(order[:limit // 2].tolist()) | set(order[-(limit - limit // 2):].tolist()))]
    line = (f"{len(bal)} classes. Share of kept rows per class (teacher prediction): min {100 * kept.min():.2f}%, "
            f"median {100 * np.median(kept):.2f}%, max {100 * kept.max():.2f}%; {int((kept == 0).sum())} classes "
            f"with no kept row (in the pool by teacher prediction: {int((pool == 0).sum())}). "
            f"The {len(shown)} classes whose share moved most:")
    return shown, line
