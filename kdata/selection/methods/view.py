"""``ScoreView``: the scores table as numpy columns, plus full probabilities when available.

Causal-LM runs (``kdata.scoring.text``) give sequence-level statistics instead of class
probabilities. For them the view derives, once and in this one place, the columns the class-based
methods read (``kd3``, ``rad``, ``coverage``, the baselines), each from per-sequence mean token
NLLs (nats) and the teacher's mean token entropy H_T:

* ``teacher_conf`` = exp(−teacher_nll): the teacher's geometric-mean token probability of the
  text (its "max probability" on the sequence it would have to label);
* ``student_conf`` = exp(−student_nll), likewise for the student;
* ``student_margin`` = clip(H_T / student_nll, 0, 1), so the student's uncertainty
  1 − margin = clip(1 − H_T / student_nll, 0, 1) is the share of the student's loss that the text's
  own uncertainty under the teacher does not explain (0 when the student is as sure as the teacher
  can be, → 1 when it is lost on text the teacher finds predictable);
* ``student_entropy`` = student_nll, the student's mean token cross-entropy on the text;
* ``kl_ts`` = mean token KL(teacher ‖ student) when the tokenizers are shared, else (null in the
  scores) |student_nll − teacher_nll|.

A student NLL that is missing (a text its own tokenizer gives < 2 tokens) is taken as the
teacher's: no gap. Image and classifier tables are read as they are.

A table of one's own with only ``sample_id``, ``teacher_logits`` and ``student_logits`` (the
bring-your-own shape, given straight to ``kdata.selection.run.select``) lacks the per-row
statistics; the view derives them (``LOGIT_DERIVED``) once, on first use, from the logits at the
view's temperature with ``kdata.core.stats.logit_stats`` — the kernel ``kdata.scoring.byo.load_scores``
runs — plus ``agree`` and ``teacher_label_prob`` (from ``label_idx`` when given). Any other missing
column is one KdataError line naming it.

One temperature governs a view. A kdata scores table records the temperature its statistics were
computed at (``kdata.core.stats.recorded_temperature``). Asked for another one, the view re-derives
every ``LOGIT_DERIVED`` column from the logits at its own temperature, ignoring the stored ones, so a
scores table and its logits alone give the same selection at any temperature; without both logits
columns that cannot be done, and the view refuses with one line. A table that records none is read
as it is (its statistics are taken to be at the view's temperature).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from kdata.core.arrow_lists import list_matrix, list_width
from kdata.core.errors import KdataError


SCORES = "scores table"  # how errors name the table a view reads
LOGITS = ("teacher_logits", "student_logits")
LM_DERIVED = ("teacher_conf", "student_conf", "student_margin", "student_entropy", "kl_ts")
# derived from teacher_logits + student_logits when absent: kdata.core.stats.STAT_NAMES + these two
LOGIT_DERIVED = ("teacher_pred", "student_pred", "teacher_conf", "student_conf", "teacher_margin",
                 "student_margin", "teacher_entropy", "student_entropy", "kl_ts", "kl_st", "agree",
                 "teacher_label_prob")


def by_sample_id(ids: np.ndarray, table: pa.Table, name: str) -> np.ndarray:
    """Column ``name`` of ``table`` at each of ``ids``, matched on its ``sample_id`` (None where it has no
    such row), as an object array: one vectorised join (``pc.index_in`` + ``take``)."""
    at = pc.index_in(pa.array(ids, pa.string()), value_set=table.column("sample_id").combine_chunks().cast(pa.string()))
    return pc.take(table.column(name).combine_chunks(), at).to_numpy(zero_copy_only=False).astype(object, copy=False)


def is_sequence_level(table: pa.Table) -> bool:
    """A causal-LM scores table: per-sequence NLLs, no class probabilities."""
    names = table.column_names
    return "teacher_nll" in names and "student_nll" in names and "teacher_topk_prob" not in names


def _float(table: pa.Table, name: str) -> np.ndarray:
    return table.column(name).to_numpy(zero_copy_only=False).astype(np.float64)


def lm_column(table: pa.Table, name: str) -> np.ndarray:
    """One of ``LM_DERIVED`` for a causal-LM scores table (module docstring), float32."""
    t = _float(table, "teacher_nll")
    s = _float(table, "student_nll")
    s = np.where(np.isnan(s), t, s)
    if name == "teacher_conf":
        out = np.exp(-t)
    elif name == "student_conf":
        out = np.exp(-s)
    elif name == "student_margin":
        h = _float(table, "teacher_entropy") if "teacher_entropy" in table.column_names else t
        out = np.clip(h / np.maximum(s, 1e-9), 0.0, 1.0)
    elif name == "student_entropy":
        out = s
    elif name == "kl_ts":
        kl = _float(table, "kl_ts") if "kl_ts" in table.column_names else np.full(len(t), np.nan)
        out = np.where(np.isnan(kl), np.abs(s - t), kl)
    else:
        raise KeyError(name)
    return out.astype(np.float32)


@dataclass
class ScoreView:
    """A scores table as the methods read it: probabilities, statistics and top-k soft labels at the
    selection temperature, derived once from whatever the table holds (full logits, top-k only, or
    causal-LM sequence statistics) and cached, so every method of a chain shares one computation."""

    table: pa.Table
    num_classes: int
    temperature: float = 1.0
    _cache: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        self._restat = self._stale_statistics()

    def _stale_statistics(self) -> bool:
        """True when the table records statistics at another temperature than the view's and has the
        logits to re-derive them; without the logits, one KdataError line (module docstring)."""
        from kdata.core.stats import recorded_temperature

        recorded = recorded_temperature(self.table)
        if recorded is None or recorded == float(self.temperature) or self.sequence_level:
            return False
        if all(n in self.table.column_names for n in LOGITS):
            return True
        raise KdataError(f"temperature {self.temperature:g}: the scores table's statistics were computed at "
                         f"temperature {recorded:g} and it has no teacher_logits/student_logits to recompute them "
                         f"at {self.temperature:g}; select at temperature={recorded:g}, or score again at "
                         f"{self.temperature:g}")

    def __len__(self) -> int:
        return self.table.num_rows

    @property
    def sequence_level(self) -> bool:
        """True for causal-LM scores (sequence statistics; class columns derived, module docstring)."""
        key = "_sequence_level"
        if key not in self._cache:
            self._cache[key] = is_sequence_level(self.table)
        return self._cache[key]

    def col(self, name: str) -> np.ndarray:
        if name not in self._cache:
            if name in LM_DERIVED and self.sequence_level:
                self._cache[name] = lm_column(self.table, name)
                return self._cache[name]
            if name not in self.table.column_names or (self._restat and name in LOGIT_DERIVED):
                if self._from_logits(name):
                    self._derive_from_logits()
                    return self._cache[name]
                raise self._missing(name)
            arr = self.table.column(name)
            t = arr.type
            if pa.types.is_list(t) or pa.types.is_fixed_size_list(t) or pa.types.is_large_list(t):
                self._cache[name] = list_matrix(self.table, name, where=SCORES)
                if name in LOGITS:
                    self._check_finite(name)
            else:
                self._cache[name] = arr.to_numpy(zero_copy_only=False)
        return self._cache[name]

    def check_classes(self) -> None:
        """``num_classes`` against the class columns: both logits ``num_classes`` wide (so each other's
        width), top-k indices below it. One KdataError line; O(N) (list lengths), no logits are read."""
        if self.sequence_level or not len(self):
            return
        names = self.table.column_names
        widths = {n: list_width(self.table, n, where=SCORES) for n in LOGITS if n in names}
        if len(set(widths.values())) > 1:
            raise KdataError(f"scores table: teacher_logits has {widths['teacher_logits']} values per row, "
                             f"student_logits {widths['student_logits']} (logit i must be class i in both)")
        for n, w in widths.items():
            if w != self.num_classes:
                raise KdataError(f"num_classes={self.num_classes}, but '{n}' has {w} values per row")
        for n in ("teacher_topk_idx", "student_topk_idx"):
            if n in names and not widths:
                top = pc.max(pc.list_flatten(self.table.column(n))).as_py()
                if top is not None and top >= self.num_classes:
                    raise KdataError(f"num_classes={self.num_classes}, but '{n}' holds class index {top}")

    def _check_finite(self, name: str) -> None:
        """Logits with NaN/inf would rank rows arbitrarily (or crash a sampler): one line, as
        ``load_scores`` says it for a file."""
        # one float64 sum per row: NaN/inf anywhere makes it non-finite, and no N × C mask is made
        bad = ~np.isfinite(self._cache[name].sum(axis=1, dtype=np.float64))
        if bad.any():
            i = int(np.argmax(bad))
            more = f" (and {int(bad.sum()) - 1} more rows)" if bad.sum() > 1 else ""
            raise KdataError(f"scores table: column '{name}' has a non-finite value (NaN/inf) in row {i} "
                             f"(sample_id {self.sample_ids[i]!r}){more}")

    def has(self, name: str) -> bool:
        return (name in self.table.column_names or (name in LM_DERIVED and self.sequence_level)
                or self._from_logits(name))

    def _from_logits(self, name: str) -> bool:
        """``name`` is absent but derivable from both networks' logits (module docstring)."""
        names = self.table.column_names
        return (name in LOGIT_DERIVED and (name not in names or self._restat) and "teacher_logits" in names
                and "student_logits" in names and not self.sequence_level)

    def _derive_from_logits(self) -> None:
        """Every missing ``LOGIT_DERIVED`` column (every one, when the stored ones are at another
        temperature), from the logits at the view's temperature."""
        from kdata.core.stats import logit_stats

        st = logit_stats(self.col("teacher_logits"), self.col("student_logits"), temperature=self.temperature)
        st["agree"] = st["teacher_pred"] == st["student_pred"]
        label = np.full(len(self), -1, dtype=np.int64)
        if "label_idx" in self.table.column_names:  # null or out of range: unknown
            label = np.nan_to_num(self.col("label_idx").astype(np.float64), nan=-1).astype(np.int64)
        ok = (label >= 0) & (label < self.col("teacher_logits").shape[1])
        lp = self.prob_at("teacher", np.where(ok, label, 0))
        st["teacher_label_prob"] = np.where(ok, lp, np.nan).astype(np.float32)
        for k, v in st.items():
            if k not in self.table.column_names or self._restat:
                self._cache.setdefault(k, v)

    def _missing(self, name: str) -> KdataError:
        have = ", ".join(self.table.column_names)
        if name == "sample_id":
            return KdataError(f"scores table: no 'sample_id' column (have: {have}); every row needs its unique id")
        return KdataError(f"scores table: no column '{name}' (have: {have}); give teacher_logits and "
                          "student_logits to derive it, or build the table with kdata.scoring.byo.load_scores "
                          "(statistics: kdata.core.stats.disagreement)")

    @property
    def sample_ids(self) -> np.ndarray:
        return self.col("sample_id")

    def prob_chunks(self, who: str, *, rows: np.ndarray | None = None, chunk: int = 65_536):
        """Yield (row indices, float64 probabilities) of ``who`` in bounded chunks.

        Memory stays O(chunk × C) whatever N is; the full-matrix ``probs`` is cached only for
        small views (N × C ≤ 2**24).
        """
        rows = np.arange(len(self)) if rows is None else np.asarray(rows)
        if len(self) * self.num_classes <= 2 ** 24:
            p = self.probs(who)
            for i in range(0, len(rows), chunk):
                r = rows[i:i + chunk]
                yield r, p[r]
            return
        for i in range(0, len(rows), chunk):
            r = rows[i:i + chunk]
            yield r, self._probs_rows(who, r)

    def _probs_rows(self, who: str, r: np.ndarray) -> np.ndarray:
        if self.has(f"{who}_logits"):
            z = self.col(f"{who}_logits")[r].astype(np.float64) / self.temperature
            z -= z.max(1, keepdims=True, initial=-np.inf)
            p = np.exp(z)
            p /= p.sum(1, keepdims=True)
            return p
        idx = self.col(f"{who}_topk_idx")[r].astype(np.int64)
        val = self.col(f"{who}_topk_prob")[r].astype(np.float64)
        rest = np.clip(1 - val.sum(1), 0, None)
        free = max(self.num_classes - idx.shape[1], 1)
        p = np.repeat((rest / free)[:, None], self.num_classes, axis=1)
        np.put_along_axis(p, idx, val, axis=1)
        return p

    def prob_at(self, who: str, cls: np.ndarray, *, chunk: int = 65_536) -> np.ndarray:
        """p_who(cls_i | x_i) per row, O(N·k) from top-k (rest spread evenly) or chunked from logits."""
        if self.has(f"{who}_logits"):
            return np.exp(self.log_prob_at(who, cls, chunk=chunk))
        return self._topk_prob_at(who, np.asarray(cls, dtype=np.int64))

    def log_prob_at(self, who: str, cls: np.ndarray, *, chunk: int = 65_536, floor: float = 1e-12) -> np.ndarray:
        """log p_who(cls_i | x_i) per row: exact log-softmax from logits (no floor, however small the
        probability); from top-k the log of ``prob_at``, floored at ``floor`` (a class outside the top-k
        of a top-k that sums to 1 has no mass left)."""
        cls = np.asarray(cls, dtype=np.int64)
        if not self.has(f"{who}_logits"):
            return np.log(np.maximum(self._topk_prob_at(who, cls), floor))
        out = np.empty(len(self), dtype=np.float64)
        z_all = self.col(f"{who}_logits")
        for i in range(0, len(self), chunk):
            z = z_all[i:i + chunk].astype(np.float64) / self.temperature
            m = z.max(1, keepdims=True, initial=-np.inf)
            lse = np.log(np.exp(z - m).sum(1)) + m[:, 0]
            out[i:i + chunk] = z[np.arange(len(z)), cls[i:i + chunk]] - lse
        return out

    def _topk_prob_at(self, who: str, cls: np.ndarray) -> np.ndarray:
        idx = self.col(f"{who}_topk_idx")
        val = self.col(f"{who}_topk_prob").astype(np.float64)
        rest = np.clip(1 - val.sum(1), 0, None) / max(self.num_classes - idx.shape[1], 1)
        hit = idx == cls[:, None]
        return np.where(hit.any(1), (val * hit).sum(1), rest)

    def exact(self, name: str) -> bool:
        """Whether the exact per-row column ``name`` (``kdata.core.exact_probs``) stands in for the
        logits: it is there, and the logits are not (with the logits, the methods compute it)."""
        return self.has(name) and not (self.has("teacher_logits") and self.has("student_logits"))

    def topk_dense(self) -> bool:
        """True when full logits are absent and C is large: use the top-k fast paths."""
        return not (self.has("teacher_logits") and self.has("student_logits")) and self.num_classes > 64

    def row_uniform(self, seed: int, salt: str = "") -> np.ndarray:
        """A uniform [0, 1) number per row from (seed, salt, sample_id) — a permanent random number
        (``kdata.selection.prn``), so seeded randomness is invariant to row order."""
        from kdata.selection.prn import prn

        key = f"_prn_{seed}_{salt}"
        if key not in self._cache:
            self._cache[key] = prn(self.sample_ids, seed=seed, salt=salt)
        return self._cache[key]

    def prn(self, seed: int) -> np.ndarray:
        """The permanent random number of each row under ``seed`` (shared by random, rad, the recipe)."""
        return self.row_uniform(seed)

    def probs(self, who: str) -> np.ndarray:
        """Full probabilities of ``teacher``/``student`` (from logits, else top-k with the rest spread)."""
        key = f"_probs_{who}"
        if key not in self._cache:
            if self.has(f"{who}_logits"):
                z = self.col(f"{who}_logits").astype(np.float64) / self.temperature
                z = z - z.max(1, keepdims=True, initial=-np.inf)
                p = np.exp(z)
                p /= p.sum(1, keepdims=True)
            else:
                idx = self.col(f"{who}_topk_idx").astype(np.int64)
                val = self.col(f"{who}_topk_prob").astype(np.float64)
                rest = np.clip(1 - val.sum(1), 0, None)
                free = max(self.num_classes - idx.shape[1], 1)
                p = np.repeat((rest / free)[:, None], self.num_classes, axis=1)
                np.put_along_axis(p, idx, val, axis=1)
            self._cache[key] = p
        return self._cache[key]
