"""Run a chain of selection methods under a budget and turn the result into decisions.

``--method critic,kd3 --budget 0.3``: filters run first (each drops rows with its own reason),
the last ranker orders what is left and the top ``budget`` rows are kept; the others are
rejected as ``<ranker>_over_budget``. A last method of kind ``sampler`` (``coverage``, the default
recipe) runs after dedup and picks its own rows. Every scored row ends kept or rejected; quarantined
rows come from scoring. ``balance="class"`` splits the budget evenly over predicted classes. Ties
and every random choice use permanent random numbers (``kdata.selection.prn``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from kdata.core.errors import KdataError, printable
from kdata.selection.methods import check_chain_options, get_method
from kdata.selection.ranking import check_count, top_k
from kdata.selection.methods.view import ScoreView


def parse_budget(text: str | int | float, n: int) -> int:
    """``200`` → 200 rows; ``0.3``/``30%``/``1.0`` → that fraction of ``n`` (rounded down, ≥ 1)."""
    s = str(text).strip()
    try:
        if s.endswith("%"):
            frac = float(s[:-1]) / 100.0
            count = None
        elif re.fullmatch(r"[+-]?\d+", s):
            count, frac = int(s), None
        else:
            frac, count = float(s), None
    except ValueError:
        raise KdataError(f"--budget '{text}': expected a count (200), a fraction (0.3) or a percentage (30%)") from None
    if count is not None:
        if count <= 0:
            raise KdataError(f"--budget {count}: must be positive")
        if count > n:
            raise KdataError(f"--budget {count}: larger than the pool ({n} samples)")
        return count
    if not (frac > 0) or math.isnan(frac):
        raise KdataError(f"--budget '{text}': must be positive")
    if frac > 1.0:  # in the user's words: a percentage stays a percentage
        if s.endswith("%"):
            raise KdataError(f"--budget {s}: at most 100% of the pool (or give a row count)")
        raise KdataError(f"--budget {s}: a fraction of the pool is at most 1.0 (or give a row count)")
    return max(1, int(math.floor(frac * n + 1e-9)))


def check_budget(text: str | int | float) -> None:
    """``--budget`` checked before the pool size is known (a count, a fraction in (0, 1] or a percentage)."""
    parse_budget(text, 2**62)


def parse_methods(text: str | list[str]) -> list[str]:
    names = [m.strip() for m in (text.split(",") if isinstance(text, str) else text) if m.strip()]
    if not names:
        raise KdataError("--method: give at least one method name")
    for name in names:
        get_method(name)  # raises on unknown
    if len(set(names)) < len(names):
        twice = next(n for i, n in enumerate(names) if n in names[:i])
        raise KdataError(f"--method {','.join(names)}: {twice} is named twice (each method runs once in a chain)")
    return names


@dataclass
class Selection:
    """The outcome over the scored rows, aligned with the scores table."""

    kept: np.ndarray  # bool
    reason: np.ndarray  # object: None for kept rows
    stage: np.ndarray  # object
    rank: np.ndarray  # int32, -1 for rejected
    scores: dict[str, np.ndarray]  # score_<method> columns
    info: dict = field(default_factory=dict)


def select(scores: pa.Table, *, methods: list[str], budget: int, seed: int = 0, num_classes: int,
           temperature: float = 1.0, balance: str | None = None, options: dict | None = None,
           dedup=None) -> Selection:
    """Apply ``methods`` (filters, then the last ranker) to ``scores`` under ``budget``.

    ``dedup(view, order) -> (dup_of, info)`` (``kdata.dedup.faiss_dedup.pipeline_dedup``) runs after the
    filters on the alive rows in ranker order (best first), before the budget: a row with
    ``dup_of >= 0`` is rejected as ``duplicate_of:<id of order[dup_of]>`` (stage ``dedup``). A last
    method of kind ``sampler`` (the default recipe's ``coverage``) runs *after* dedup, on the rows
    left, and dedup then visits rows in permanent-random-number order (which copy survives does not
    depend on the scores, so it is stable).

    ``scores`` needs ``sample_id`` (string, unique) plus what the methods read: a kdata scores table
    (``kdata.scoring``, ``kdata.scoring.byo.load_scores``) has every statistic; a table of your own
    with ``teacher_logits`` and ``student_logits`` (lists of ``num_classes`` floats, the bring-your-own
    shape) is enough for every class-based method, since the view derives the statistics
    (``teacher_conf``, ``student_entropy``, ``kl_ts``, margins…) from the logits with
    ``kdata.core.stats.logit_stats`` at ``temperature``, as ``load_scores`` does. One temperature
    governs: a table that records another scoring temperature (``kdata.core.stats.recorded_temperature``)
    has every statistic re-derived from its logits at ``temperature``, or, without logits, is refused.
    ``num_classes`` must be the logits' width. A column that is missing and cannot be derived, a
    ``scores`` that is not a ``pyarrow.Table``, a duplicated ``sample_id``, ragged or mismatched logits:
    each is one KdataError line. ``budget`` is a row count (an integer ≥ 0);
    ``options`` maps method name → its options (``kdata.selection.methods.check_options``: an
    unknown option of a method in the chain is refused; entries for other methods are ignored).
    """
    check_scores_table(scores)
    methods = parse_methods(methods)
    budget = check_count(budget, what="select: budget")
    if isinstance(num_classes, (bool, np.bool_)) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise KdataError(f"select: num_classes {num_classes!r}: must be an integer ≥ 1 (the logits' width)")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float, np.integer, np.floating)) \
            or not 0 < temperature < math.inf:
        raise KdataError(f"select: temperature {temperature!r}: must be a finite number > 0")
    check_chain_options(methods, options or {}, where="select: options", others_ok=True)
    try:
        view = ScoreView(scores, num_classes=num_classes, temperature=temperature)
        view.check_classes()
    except KdataError as exc:
        raise KdataError(f"select: {exc}") from None
    n = len(view)
    st = _State(alive=np.ones(n, dtype=bool), reason=np.full(n, None, dtype=object),
                stage=np.full(n, None, dtype=object))
    options = options or {}
    sampler = get_method(methods[-1]).kind == "sampler"
    for name in methods[:-1] if sampler else methods:
        _apply(st, view, name, budget=budget, seed=seed, options=options.get(name, {}), last=name == methods[-1])
    if dedup is not None:  # duplicates must not take budget; the better-ranked copy survives
        cand = np.flatnonzero(st.alive)
        key = -view.prn(seed)[cand] if sampler or st.ranker_score is None else st.ranker_score[cand]
        order = cand[top_k(key, len(cand), seed=seed, tie=view.prn(seed)[cand])]
        dup_of, st.info["dedup"] = dedup(view, order)
        hit = np.flatnonzero(dup_of >= 0)
        ids = view.sample_ids
        st.reason[order[hit]] = [f"duplicate_of:{ids[order[d]]}" for d in dup_of[hit]]
        st.stage[order[hit]] = "dedup"
        st.alive[order[hit]] = False
    if sampler:
        opts = {"deduped": dedup is not None, **options.get(methods[-1], {})}
        _apply(st, view, methods[-1], budget=budget, seed=seed, options=opts, last=True)
    return _finish(st, view, budget=budget, seed=seed, balance=balance)


def check_scores_table(scores) -> None:
    """What ``select`` needs of ``scores`` before any method runs: a ``pyarrow.Table`` with a ``sample_id``
    column whose ids are unique (one vectorised hash pass). Each problem is one KdataError line."""
    if not isinstance(scores, pa.Table):
        hint = " (pa.Table.from_pandas(df, preserve_index=False))" if type(scores).__name__ == "DataFrame" else ""
        raise KdataError(f"select: scores is a {type(scores).__module__}.{type(scores).__name__}, expected a "
                         f"pyarrow.Table{hint}")
    if "sample_id" not in scores.column_names:
        raise KdataError(f"select: the scores table has no 'sample_id' column (have: {', '.join(scores.column_names)})")
    ids = scores.column("sample_id")
    if ids.null_count:
        i = int(np.argmax(ids.is_null().to_numpy(zero_copy_only=False)))
        raise KdataError(f"select: sample_id is null in row {i}; every row needs its unique id")
    if scores.num_rows and len(pc.unique(ids)) != scores.num_rows:
        counts = pc.value_counts(ids)
        dup = counts.filter(pc.greater(counts.field("counts"), 1))[0]
        raise KdataError(f"select: sample_id {printable(dup['values'].as_py())!r} appears "
                         f"{dup['counts'].as_py()} times; sample ids must be unique")


def balance_info(balance: str, groups: np.ndarray, kept: np.ndarray, *, listed: int = 64) -> dict:
    """What ``--balance`` did, for the manifest's ``method_info.balance``: the groups the candidates fell
    in, and the candidates and kept rows of each (the ``listed`` largest groups by name; every count
    summed in ``kept_min``/``kept_max``)."""
    names, inv = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    cand_n = np.bincount(inv, minlength=len(names))
    kept_n = np.bincount(inv[kept], minlength=len(names))
    top = np.argsort(-cand_n, kind="stable")[:listed]
    return {"kind": balance, "groups": int(len(names)), "kept_min": int(kept_n.min()) if len(names) else 0,
            "kept_max": int(kept_n.max()) if len(names) else 0,
            "per_group": {str(names[i]): {"candidates": int(cand_n[i]), "kept": int(kept_n[i])} for i in sorted(top)}}


@dataclass
class _State:
    alive: np.ndarray
    reason: np.ndarray
    stage: np.ndarray
    scores: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)
    ranker_score: np.ndarray | None = None
    ranker_name: str = ""


def _apply(st: _State, view: ScoreView, name: str, *, budget: int, seed: int, options: dict, last: bool) -> None:
    """Run one method on the alive rows; a filter's drops get its reason and stage."""
    n = len(view)
    m = get_method(name)
    res = m.fn(view, budget=budget, seed=seed, alive=st.alive.copy(), **options)
    sc = np.asarray(res.score, dtype=np.float64)
    if sc.shape != (n,):
        raise RuntimeError(f"method {name} returned {sc.shape} scores for {n} rows")
    st.scores[f"score_{name}"] = sc
    if res.info:
        st.info[name] = res.info
    if res.keep is not None:  # a filter (or a ranker that also excludes rows)
        drop = st.alive & ~np.asarray(res.keep, dtype=bool)
        r = res.reason if res.reason is not None else f"{name}_reject"
        st.reason[drop] = r[drop] if isinstance(r, np.ndarray) else r
        st.stage[drop] = name
        st.alive &= ~drop
    if m.kind in ("ranker", "sampler") or last:
        st.ranker_score, st.ranker_name = sc, name


def _finish(st: _State, view: ScoreView, *, budget: int, seed: int, balance: str | None) -> Selection:
    """The top ``budget`` alive rows by the ranker's score (per group under ``balance``) are kept."""
    n = len(view)
    cand = np.flatnonzero(st.alive)
    groups = None
    if balance == "class":
        groups = view.col("teacher_pred")[cand]
    elif balance not in (None, "none"):
        from kdata.selection.balance import groups_for  # cluster / domain balance live with their stage
        groups = groups_for(balance, view, cand, seed=seed)
    chosen = cand[top_k(st.ranker_score[cand], budget, seed=seed, groups=groups, tie=view.prn(seed)[cand])]
    kept = np.zeros(n, dtype=bool)
    kept[chosen] = True
    if groups is not None:
        st.info["balance"] = balance_info(balance, groups, np.isin(cand, chosen))
    over = st.alive & ~kept
    st.reason[over] = f"{st.ranker_name}_over_budget"
    st.stage[st.alive] = st.ranker_name  # kept and over budget alike: the last ranker decided them
    rank = np.full(n, -1, dtype=np.int32)
    rank[chosen] = np.arange(len(chosen), dtype=np.int32)
    return Selection(kept=kept, reason=st.reason, stage=st.stage, rank=rank, scores=st.scores, info=st.info)
