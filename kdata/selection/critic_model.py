"""A small critic that accepts or rejects samples (Symbolic Knowledge Distillation, West et al.,
arXiv 2110.07178; I2D2, arXiv 2212.09246).

Symbolic KD trains a critic on a small human-labelled accept/reject sample of teacher-generated
data and keeps only what the critic accepts; the decision threshold trades precision for recall
(the paper reports cuts at recall 0.5–0.9). kdata's critic is a logistic regression on
standardised features — the teacher's embedding (the scores table's ``embedding`` column) plus
the disagreement statistics — fitted with scikit-learn; the threshold is the highest probability
cut that still reaches the target recall (or the lowest that reaches the target precision) on a
held-out validation split (stratified, ``val_frac`` = 0.3 by default).

Saved as two plain files, no pickle: ``critic.npz`` (weights, scaler, validation scores and
labels so the cut can be re-chosen for another target) and ``critic.json`` (feature names,
threshold, target, validation metrics). The reported precision/recall are cross-fitted on the
validation split (the cut re-chosen on one half, measured on the other): measured on the rows that
chose the cut, recall would meet the target by construction (``metrics["estimate"]`` says which).

Public API: ``fit_critic``, ``check_target`` / ``check_val_frac`` (the option checks every entry point
shares), ``Critic.score(features) -> P(accept)``, ``Critic.threshold``,
``Critic.accept(features) -> bool mask``, ``Critic.with_target(recall=|precision=)``,
``Critic.save(dir)``, ``load_critic(dir)``, ``feature_matrix(view_or_table) -> (X, names)``
(``Critic.score`` also takes the table/view directly).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from kdata.core.errors import KdataError
from kdata.core.warn import warn
from kdata.selection.critic_files import FORMAT, feature_mismatch, read_critic_files, write_critic_dir

STAT_FEATURES = ("teacher_conf", "student_conf", "teacher_margin", "student_margin", "teacher_entropy",
                 "student_entropy", "kl_ts", "kl_st")


def _real(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def check_target(*, recall=None, precision=None, option: str = "critic {}") -> None:
    """A recall / precision target in (0, 1], else one line; ``option`` names it (``"--critic-{}"``)."""
    for name, v in (("recall", recall), ("precision", precision)):
        if v is not None and not (_real(v) and 0 < v <= 1):
            raise KdataError(f"{option.format(name)} {v}: expected a {name} in (0, 1]")


def check_val_frac(val_frac, *, n: int | None = None, option: str = "critic val_frac") -> None:
    """A validation fraction in (0, 1); with ``n`` labelled rows, one that leaves ≥ 2 rows (one per class)
    on each side of the stratified split."""
    if not (_real(val_frac) and 0 < val_frac < 1):
        raise KdataError(f"{option} {val_frac}: expected a fraction in (0, 1)")
    if n is not None:
        n_val = math.ceil(val_frac * n)  # as train_test_split rounds
        if min(n_val, n - n_val) < 2:
            raise KdataError(f"{option} {val_frac}: splits {n} labelled samples into {n - n_val} training and "
                             f"{n_val} validation; each side needs ≥ 2 (one per class)")


def feature_matrix(source, *, embedding: bool | None = None) -> tuple[np.ndarray, list[str]]:
    """Feature matrix (float64, rows × features) and feature names from a ScoreView or Arrow table.

    Features: the disagreement statistics, ``agree``, then the ``embedding`` columns when present
    (``embedding=False`` leaves them out, ``True`` requires them).
    """
    from kdata.core.arrow_lists import list_matrix
    from kdata.selection.methods.view import ScoreView

    table = source.table if isinstance(source, ScoreView) else source
    if not isinstance(table, pa.Table):
        raise TypeError("feature_matrix needs a ScoreView or a pyarrow Table")
    names = table.column_names
    missing = [c for c in STAT_FEATURES if c not in names]
    if missing:
        raise KdataError(f"critic: the scores lack column(s) {', '.join(missing)}")
    cols = [table.column(c).to_numpy(zero_copy_only=False).astype(np.float64) for c in STAT_FEATURES]
    feat_names = list(STAT_FEATURES)
    if "agree" in names:
        cols.append(table.column("agree").to_numpy(zero_copy_only=False).astype(np.float64))
        feat_names.append("agree")
    X = np.stack(cols, axis=1) if cols else np.zeros((table.num_rows, 0))
    use_emb = ("embedding" in names) if embedding is None else embedding
    if use_emb:
        if "embedding" not in names:
            raise KdataError("critic: it was fitted with embeddings but these scores have no 'embedding' column")
        E = list_matrix(table, "embedding", where="scores table", dtype=np.float32).astype(np.float64)
        X = np.concatenate([X, E], axis=1)
        feat_names += [f"embedding_{j}" for j in range(E.shape[1])]
    return np.nan_to_num(X, nan=0.0, posinf=0.0, neginf=0.0), feat_names


def pick_threshold(prob: np.ndarray, y: np.ndarray, *, recall: float | None = None,
                   precision: float | None = None) -> float:
    """The cut on P(accept): the highest one with recall ≥ target, or the lowest with precision ≥ target."""
    check_target(recall=recall, precision=precision)
    prob = np.asarray(prob, dtype=np.float64)
    y = np.asarray(y, dtype=bool)
    if y.sum() == 0:
        raise KdataError("critic: the validation split has no accepted samples")
    order = np.argsort(-prob, kind="stable")
    ps, ys = prob[order], y[order]
    tp = np.cumsum(ys)
    # evaluate only at the last index of each run of equal probabilities (cut = that probability)
    last = np.r_[ps[1:] != ps[:-1], True]
    rec = tp / y.sum()
    prec = tp / np.arange(1, len(ys) + 1)
    if recall is not None:
        ok = np.flatnonzero(last & (rec >= recall - 1e-12))
        return float(ps[ok[0]])  # the first (highest) cut reaching the recall
    if precision is not None:
        ok = np.flatnonzero(last & (prec >= precision - 1e-12))
        if not len(ok):
            return float(ps[0]) + 1e-12  # unreachable: accept nothing
        return float(ps[ok[-1]])  # the lowest cut that still has the precision
    return 0.5


@dataclass
class Critic:
    """A fitted accept/reject critic (Symbolic KD, arXiv 2110.07178): a standardised logistic regression
    over score features (and embeddings), its threshold chosen for the requested recall or precision on
    held-out rows, with the cross-fitted estimates of both; saved as ``critic.npz`` + ``critic.json``."""

    coef: np.ndarray
    intercept: float
    mean: np.ndarray
    scale: np.ndarray
    feature_names: list[str]
    threshold: float
    target: dict = field(default_factory=dict)  # {"recall": 0.8} or {"precision": 0.9}
    val_prob: np.ndarray = field(default_factory=lambda: np.zeros(0))
    val_label: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    metrics: dict = field(default_factory=dict)
    text: dict = field(default_factory=dict)  # text critics: {"kind": "text", "teacher", "teacher_checksum",
    #                                            "student", "student_checksum", "embedder", "embedder_checksum"}
    models: dict | None = None  # image critics: the models fitted with (kdata.selection.critic_checks); None: unknown
    path: str | None = field(default=None, compare=False)  # the directory it was loaded from (named in errors)

    @property
    def uses_embedding(self) -> bool:
        return any(n.startswith("embedding_") for n in self.feature_names)

    @property
    def is_text(self) -> bool:
        return self.text.get("kind") == "text"

    def features(self, source, *, pool=None, texts=None, device="cpu") -> np.ndarray:
        """The critic's feature matrix of ``source``; a text critic reads the texts from ``texts``, a
        ``text`` column or ``pool`` (``kdata.selection.critic_text``)."""
        if self.is_text:
            from kdata.selection.critic_text import text_feature_matrix
            from kdata.selection.methods.view import ScoreView

            table = source.table if isinstance(source, ScoreView) else source
            X, names = text_feature_matrix(table, embedder=self.text.get("embedder"), texts=texts, pool=pool,
                                           device=device, embedder_checksum=self.text.get("embedder_checksum"))
        else:
            X, names = feature_matrix(source, embedding=self.uses_embedding)
        if names != self.feature_names:
            where = feature_mismatch(self.feature_names, names)
            raise KdataError(f"{self.path or 'critic'}: feature mismatch: {where}; "
                             "score with the teacher and student (and embedder) it was fitted with")
        return X

    def score(self, features, *, pool=None, texts=None, device="cpu") -> np.ndarray:
        """P(accept) per row; ``features`` is a matrix or anything ``feature_matrix`` accepts
        (``pool``/``texts``: where a text critic finds the texts)."""
        X = features if isinstance(features, np.ndarray) else \
            self.features(features, pool=pool, texts=texts, device=device)
        if X.shape[1] != len(self.coef):
            raise KdataError(f"critic: expected {len(self.coef)} features, got {X.shape[1]}")
        z = ((X - self.mean) / self.scale) @ self.coef + self.intercept
        return 1.0 / (1.0 + np.exp(-np.clip(z, -50, 50)))

    def accept(self, features) -> np.ndarray:
        return self.score(features) >= self.threshold

    def with_target(self, *, recall: float | None = None, precision: float | None = None) -> "Critic":
        """The same critic with the cut re-chosen on its stored validation split (figures as ``_metrics``)."""
        if recall is None and precision is None:
            return self
        t = pick_threshold(self.val_prob, self.val_label, recall=recall, precision=precision)
        target = {"recall": recall} if recall is not None else {"precision": precision}
        return Critic(**{**self.__dict__, "threshold": t, "target": target,
                         "metrics": _metrics(self.val_prob, self.val_label, t, recall=recall, precision=precision)})

    def save(self, path: str | Path, *, fit: str | None = None) -> Path:
        """Write ``critic.npz`` + ``critic.json`` into the directory ``path`` atomically (a new or empty
        directory, or over another critic: ``kdata.selection.critic_files``); ``fit``: the hash of how it
        was fitted (``kdata critic fit`` records it to recognise a rerun of the same fit)."""
        arrays = {"coef": self.coef, "intercept": np.array([self.intercept]), "mean": self.mean,
                  "scale": self.scale, "val_prob": self.val_prob, "val_label": self.val_label.astype(np.uint8)}
        meta = {"format": FORMAT, "feature_names": self.feature_names, "threshold": self.threshold,
                "target": self.target, "metrics": self.metrics, **({"text": self.text} if self.text else {}),
                **({"models": self.models} if self.models is not None else {}), **({"fit": fit} if fit else {})}
        return write_critic_dir(path, arrays, meta)


CROSS_FITTED = "cross-fitted on the validation split"
SAME_SPLIT = "on the threshold split (the cut was chosen on these rows: optimistic)"


def _at(prob: np.ndarray, y: np.ndarray, t: float) -> tuple[float, float, float]:
    """(accept rate, recall, precision) of cut ``t`` on rows ``prob``/``y``."""
    acc, y = prob >= t, y.astype(bool)
    tp = int((acc & y).sum())
    return (float(acc.mean()) if len(y) else 0.0), tp / max(int(y.sum()), 1), tp / max(int(acc.sum()), 1)


def _halves(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two stratified halves of the validation rows (masks), drawn with a fixed seed: ``with_target``
    and a reloaded critic draw the same ones."""
    a, rng = np.zeros(len(y), bool), np.random.default_rng(0)
    for cls in (True, False):
        a[rng.permutation(np.flatnonzero(y == cls))[::2]] = True
    return a, ~a


def _metrics(prob: np.ndarray, y: np.ndarray, t: float, *, recall: float | None = None,
             precision: float | None = None) -> dict:
    """Validation figures of cut ``t``, chosen on these rows for the target (``recall``/``precision``).

    Measured on the rows that chose the cut, recall meets the target by construction and precision is
    optimistic, so ``val_recall``/``val_precision``/``val_accept_rate`` are cross-fitted: the cut is
    re-chosen on one stratified half and measured on the other, both ways, and the two averaged
    (``estimate`` says so; the figures on the threshold split are kept as ``threshold_split_*``). Too
    few accepted rows to halve (or no target: the cut was not chosen on them) leaves the same-split figures."""
    y = np.asarray(y, bool)
    rate, rec, prec = _at(prob, y, t)
    out = {"val_n": int(len(y)), "val_accept_rate": rate, "val_recall": rec, "val_precision": prec,
           "threshold_split_recall": rec, "threshold_split_precision": prec}
    halves = _halves(y)
    if recall is None and precision is None:
        return {**out, "estimate": "on the validation split (a fixed cut, not chosen on it)"}
    if min(int(y[h].sum()) for h in halves) < 1:
        return {**out, "estimate": SAME_SPLIT + "; too few accepted rows to cross-fit"}
    folds = np.array([_at(prob[b], y[b], pick_threshold(prob[a], y[a], recall=recall, precision=precision))
                      for a, b in (halves, halves[::-1])])
    rate, rec, prec = (float(v) for v in folds.mean(0))
    return {**out, "val_accept_rate": rate, "val_recall": rec, "val_precision": prec, "estimate": CROSS_FITTED}


def fit_critic(features: np.ndarray, labels: np.ndarray, *, feature_names: list[str], recall: float | None = 0.8,
               precision: float | None = None, val_frac: float = 0.3, seed: int = 0, c: float = 1.0) -> Critic:
    """Fit on a stratified train split, pick the cut on the validation split for the target; the
    reported figures are cross-fitted on that split (``_metrics``)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    check_target(recall=recall, precision=precision)
    check_val_frac(val_frac)
    X = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    if len(y) < 10 or y.sum() < 2 or (~y).sum() < 2:
        raise KdataError(f"critic: need at least 10 labelled samples with ≥ 2 accepted and ≥ 2 rejected "
                         f"(got {len(y)}: {int(y.sum())} accepted)")
    check_val_frac(val_frac, n=len(y))
    if precision is not None:
        recall = None
    Xtr, Xva, ytr, yva = train_test_split(X, y, test_size=val_frac, random_state=seed, stratify=y)
    mean = Xtr.mean(0)
    scale = Xtr.std(0)
    scale[scale < 1e-12] = 1.0
    clf = LogisticRegression(C=c, max_iter=2000, class_weight="balanced")
    clf.fit((Xtr - mean) / scale, ytr)
    crit = Critic(coef=clf.coef_[0].astype(np.float64), intercept=float(clf.intercept_[0]), mean=mean, scale=scale,
                  feature_names=list(feature_names), threshold=0.5)
    vp = crit.score(Xva)
    crit.val_prob, crit.val_label = vp, yva
    t = pick_threshold(vp, yva, recall=recall, precision=precision)
    crit.threshold = t
    crit.target = {"recall": recall} if recall is not None else ({"precision": precision} if precision else {})
    crit.metrics = _metrics(vp, yva, t, recall=recall, precision=precision)
    return crit


def load_critic(path: str | Path) -> Critic:
    """The critic in directory ``path``, every field checked first: one line naming the file and the
    field when anything is missing, mistyped, non-finite or inconsistent (``read_critic_files``)."""
    f = read_critic_files(path)
    return Critic(**{**f, "metrics": _saved_metrics(f["metrics"])}, path=str(path))


def _saved_metrics(metrics: dict) -> dict:
    """A critic saved before kdata cross-fitted its figures measured them on the threshold split: say so."""
    return {**metrics, "estimate": SAME_SPLIT} if metrics and "estimate" not in metrics else metrics


def read_labels(path: str | Path) -> dict[str, bool]:
    """A CSV of ``sample_id,accept`` (accept: 1/0, true/false, yes/no, accept/reject), UTF-8 with or without
    a BOM. An id labelled twice is one line naming both lines when the labels differ; when they agree it
    counts once, with one warning (``kdata.core.warn``) for all such repeats."""
    import csv

    p = Path(path)
    if not p.exists():
        raise KdataError(f"{path}: no such labels file")
    truthy, falsy = {"1", "true", "yes", "accept", "y", "t"}, {"0", "false", "no", "reject", "n", "f"}
    out: dict[str, bool] = {}
    first_line: dict[str, int] = {}
    repeats: list[tuple[str, int, int]] = []
    try:
        with p.open(newline="", encoding="utf-8-sig") as f:  # utf-8-sig: a spreadsheet's BOM is not the header
            reader = csv.DictReader(f)
            if not reader.fieldnames or "sample_id" not in reader.fieldnames or "accept" not in reader.fieldnames:
                raise KdataError(f"{path}: expected a header 'sample_id,accept'")
            for row in reader:
                line, sid = reader.line_num, row["sample_id"]
                v = (row["accept"] or "").strip().lower()
                if v not in truthy | falsy:
                    raise KdataError(f"{path}: line {line}: accept must be 1/0 or true/false, got {row['accept']!r}")
                if sid in out:
                    if out[sid] != (v in truthy):
                        raise KdataError(f"{path}: lines {first_line[sid]} and {line} both label {sid!r}, as "
                                         f"{_word(out[sid])} and {_word(v in truthy)}; keep one label per sample")
                    repeats.append((sid, first_line[sid], line))
                    continue
                out[sid], first_line[sid] = v in truthy, line
    except UnicodeDecodeError as exc:
        raise KdataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except csv.Error as exc:
        raise KdataError(f"{path}: not a readable CSV ({exc})") from None
    if not out:
        raise KdataError(f"{path}: no labelled rows")
    if repeats:
        sid, a, b = repeats[0]
        warn(f"{path}: {len(repeats)} row(s) repeat a sample id with the same label (e.g. {sid!r} "
             f"on lines {a} and {b}); each id counted once")
    return out


def _word(accept: bool) -> str:
    return "accept" if accept else "reject"
