"""Summaries of a curated dataset directory: counts, class balance, score quantiles, examples. All
read back from what a run wrote (``manifest.json``, ``decisions.parquet``, the curated shards), so the
same numbers feed ``kdata inspect`` (terminal and ``--json``) and the data card (``kdata.report.card``)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from kdata.core.atomic import sha256_file
from kdata.dataset.schema import KEPT, QUARANTINED, REJECTED, SCORE_PREFIX
from kdata.core.errors import KdataError
from kdata.dataset.integrity import inside, read_decisions
from kdata.dataset.manifest import curated_manifest
from kdata.dataset.writer import shard_paths, verify
# class balance and the generated (HARD) rows live beside the card's table; summaries here use them
from kdata.report.card_balance import MAX_BALANCE_ROWS, balance_highlights, class_balance, generated_rows
from kdata.report.card_payloads import ShardFiles
from kdata.report.quarantine import MAX_LISTED, quarantine_fields, quarantine_kinds, quarantined_rows

__all__ = ["MAX_BALANCE_ROWS", "Run", "agreement", "balance_highlights", "card_status", "class_balance",
           "decision_counts", "examples", "generated_rows", "load_run", "pick_rejected", "primary_score",
           "quarantined_rows", "reason_group", "rejected_examples", "sample", "score_columns", "score_quantiles",
           "summarise"]

QUANTILES = (("min", 0.0), ("p05", 0.05), ("p25", 0.25), ("p50", 0.5), ("p75", 0.75), ("p95", 0.95), ("max", 1.0))
# score columns decisions.parquet holds for every scored row (besides score_<method>)
DECISION_SCORES = ("teacher_conf", "kl_ts")
# shard-only statistics (kept rows)
SHARD_SCORES = ("student_conf", "teacher_margin", "teacher_entropy", "student_entropy")


@dataclass
class Run:
    """A curated dataset read back: its manifest, decisions (or None) and shards (or None): every shard
    column but the ``image`` / ``text`` payloads, which ``payload`` reads for the rows a summary shows."""

    out: Path
    manifest: dict
    decisions: pa.Table | None
    shards: pa.Table | None
    shard_error: str | None = None
    pool: object = None  # the run's own pool, when the pipeline writes the card (else: kdata.report.pool_source)
    files: ShardFiles | None = None  # the shards on disk (payloads); None: ``shards`` holds every column

    @property
    def shard_schema(self) -> pa.Schema | None:
        """Every shard column, payloads included."""
        return self.files.schema if self.files is not None else self.shards.schema if self.shards is not None else None

    shard_columns = property(lambda self: self.shard_schema.names if self.shard_schema is not None else [])

    def has_values(self, name: str) -> bool:
        """The shards hold a non-null ``name`` (a payload: told by the shards' statistics, not read)."""
        if self.shards is not None and name in self.shards.column_names:
            return self.shards.column(name).null_count < self.shards.num_rows
        return self.files is not None and self.files.has_values(name)

    def payload(self, name: str, positions) -> list:
        """Shard column ``name`` at the rows ``positions`` of ``shards`` (payloads: those row groups only);
        an unreadable shard gives None and is noted in ``shard_error``, so the summary goes on."""
        if self.shards is not None and name in self.shards.column_names:
            return self.shards.column(name).take(pa.array(positions, pa.int64())).to_pylist()
        try:
            return self.files.take(name, positions) if self.files is not None else [None] * len(positions)
        except KdataError as exc:
            self.shard_error = self.shard_error or str(exc).split(": ", 1)[-1]
            return [None] * len(positions)

    def payloads_of(self, name: str, ids: list[str]) -> dict:
        """sample_id → shard column ``name`` (payloads: their row groups alone) of the kept rows among ``ids``."""
        if self.shards is None or not ids: return {}  # noqa: E701
        at = np.flatnonzero(pc.fill_null(pc.is_in(self.shards.column("sample_id"), value_set=pa.array(
            ids, pa.string())), False).to_numpy(zero_copy_only=False))
        shard_ids = self.shards.column("sample_id").take(pa.array(at, pa.int64())).to_pylist()
        return {i: v for i, v in zip(shard_ids, self.payload(name, at)) if v is not None}

    @property
    def class_names(self) -> list[str]:
        return list(self.manifest.get("class_names") or [])

    def class_name(self, i) -> str:
        names = self.class_names
        if i is None or i < 0:
            return "?"
        return names[i] if i < len(names) else str(i)


def load_run(out: str | Path, *, manifest: dict | None = None) -> Run:
    """Read OUT back. Unreadable shards are reported in ``shard_error`` instead of raising."""
    out = Path(out)
    if manifest is None:
        manifest = curated_manifest(out)
    elif not out.is_dir():
        curated_manifest(out)  # the one line for a missing directory or a file
    decisions = read_decisions(out, manifest)
    shards, shard_files, err = None, None, None
    files = manifest.get("files")
    if isinstance(files, list):  # entries that are malformed or point outside OUT are left to verify() to report
        paths = [p for f in files if isinstance(f, dict) and (p := inside(out, f.get("path"))) is not None]
    else:
        paths = shard_paths(out) if files is None else []
    try:  # payloads are left on disk: ``Run.payload`` reads the few rows a summary pictures
        shard_files = ShardFiles.open(paths) if paths else None
        shards = shard_files.scalars() if shard_files is not None else None
    except (OSError, pa.ArrowException) as exc:
        shard_files, err = None, f"unreadable shard ({exc})"
    return Run(out=out, manifest=manifest, decisions=decisions, shards=shards, shard_error=err, files=shard_files)


# ------------------------------------------------------------------------------------------------
# Pieces of the summary

def _col(t: pa.Table, name: str) -> np.ndarray:
    return t.column(name).to_numpy(zero_copy_only=False)


def reason_group(reason: str | None) -> str:
    """``duplicate_of:<id>`` → ``duplicate_of``: reasons that carry an argument grouped by kind."""
    if reason is None:
        return "none"
    return reason.split(":", 1)[0]


def decision_counts(run: Run) -> dict:
    """Counts by decision, by (grouped) reason and by stage, plus generated and critic-rejected."""
    c = dict(run.manifest.get("counts") or {})
    out = {"n_in": c.get("n_in"), "kept": c.get("kept"), "rejected": c.get("rejected"),
           "quarantined": c.get("quarantined"), "rejected_by_reason": dict(c.get("rejected_by_reason") or {}),
           "quarantined_by_reason": quarantine_kinds(run)}
    grouped: Counter = Counter()
    for r, n in out["rejected_by_reason"].items():
        grouped[reason_group(r)] += n
    out["rejected_by_reason_group"] = dict(sorted(grouped.items(), key=lambda kv: (-kv[1], kv[0])))
    out["critic_rejected"] = sum(n for r, n in out["rejected_by_reason"].items() if r.startswith("critic"))
    in_shards = c.get("generated_kept")
    if in_shards is None and run.shards is not None:
        in_shards = int(generated_rows(run).sum())
    out["generated"] = int(c.get("generated") or in_shards or 0)  # HARD rows generated
    out["generated_kept"] = int(in_shards or 0)  # ... of which accepted by the critic (in the shards)
    out["generated_rejected"] = int(c.get("generated_rejected") or 0)
    by_stage: dict[str, dict[str, int]] = {}
    if run.decisions is not None and "stage" in run.decisions.column_names:
        # one group per (stage, decision), in order of first appearance (use_threads=False)
        g = run.decisions.select(["stage", "decision"]).group_by(["stage", "decision"], use_threads=False)
        g = g.aggregate([([], "count_all")])
        for s, d, n in zip(*(g.column(k).to_pylist() for k in ("stage", "decision", "count_all"))):
            by_stage.setdefault(s or "?", Counter())[d] += n  # the stage column's value: kept rows too
    out["by_stage"] = {k: dict(v) for k, v in by_stage.items()}
    return out


def _isnull(t: pa.Table, name: str) -> np.ndarray:
    return t.column(name).is_null().to_numpy(zero_copy_only=False)


def _quantiles(v: np.ndarray) -> dict | None:
    v = v[~np.isnan(v)]
    if not len(v):
        return None
    return {**{k: float(x) for (k, _), x in zip(QUANTILES, np.quantile(v, [q for _, q in QUANTILES]))},
            "mean": float(v.mean()), "n": int(len(v))}


def score_columns(run: Run) -> list[str]:
    """Score columns of the decisions table: score_<method> first, then teacher_conf, kl_ts."""
    if run.decisions is None:
        return []
    names = run.decisions.column_names
    return [c for c in names if c.startswith(SCORE_PREFIX)] + [c for c in DECISION_SCORES if c in names]


def score_quantiles(run: Run) -> dict:
    """Quantiles of every score, for kept and rejected rows (decisions) and kept-only shard stats."""
    out: dict[str, dict] = {}
    if run.decisions is not None:
        dec = np.array(run.decisions.column("decision").to_pylist(), dtype=object)
        for c in score_columns(run):
            v = _col(run.decisions, c).astype(np.float64)
            out[c] = {d: _quantiles(v[dec == d]) for d in (KEPT, REJECTED)}
    if run.shards is not None:  # kept-only statistics from the shards: the kept inputs, generated rows apart
        g = generated_rows(run)
        extra = [c for c in run.shards.column_names if c.startswith(SCORE_PREFIX) and c not in out]
        for c in list(out) + extra + [c for c in SHARD_SCORES + DECISION_SCORES if c not in out]:
            if c in run.shards.column_names:
                v = _col(run.shards, c).astype(np.float64)
                out[c] = out.get(c) or {KEPT: _quantiles(v[~g]), REJECTED: None}
                if g.any():
                    out[c]["generated"] = _quantiles(v[g])
    return out


def agreement(run: Run) -> dict:
    """Teacher/student top-1 agreement (and teacher/web-label agreement) on all scored, kept and rejected
    rows, and on the generated rows apart (their label is their parent's web label). None of it for
    causal LMs: a sequence has no top-1 class (its per-token scores are elsewhere)."""
    out = {}
    if (run.manifest.get("scoring") or {}).get("kind") == "causal_lm" or run.manifest.get("generate"):
        return out  # generated candidates carry no predictions either
    g = generated_rows(run)
    if run.decisions is not None:
        d = run.decisions.filter(pc.not_equal(run.decisions.column("decision"), QUARANTINED))
        dec = np.array(d.column("decision").to_pylist(), dtype=object)
        for name, m in (("all_scored", np.ones(len(dec), bool)), (KEPT, dec == KEPT), (REJECTED, dec == REJECTED)):
            out[name] = _agree(d, m)
        if g.any():
            out["generated"] = _agree(run.shards, g)
    elif run.shards is not None:
        a = _col(run.shards, "agree")[~g]
        out[KEPT] = {"n": len(a), "teacher_student": float(np.mean(a)) if len(a) else None, "teacher_label": None}
    return out


def _agree(t: pa.Table, m: np.ndarray) -> dict:
    """Agreement over the rows ``m`` of ``t`` (decisions or shards)."""
    tp, sp = _col(t, "teacher_pred"), _col(t, "student_pred")
    li = np.where(_isnull(t, "label_idx"), -1, _col(t, "label_idx")) if "label_idx" in t.column_names \
        else np.full(len(tp), -1)
    has_label = m & (li >= 0)
    return {"n": int(m.sum()), "teacher_student": float(np.mean(tp[m] == sp[m])) if m.any() else None,
            "teacher_label": float(np.mean(tp[has_label] == li[has_label])) if has_label.any() else None}


def card_status(run: Run) -> dict:
    """Whether the data card still matches the checksums recorded in the manifest.

    A changed card is reported but is not an integrity failure: cards are meant to be edited.
    """
    card = run.manifest.get("card")
    if not card or not isinstance(card, dict):
        return {"present": (run.out / "README.md").exists(), "recorded": False, "changed": []}
    changed = []
    for f in card.get("files", []) if isinstance(card.get("files"), list) else []:
        p = inside(run.out, f.get("path")) if isinstance(f, dict) else None
        if p is None or not p.is_file() or sha256_file(p) != f.get("sha256"):
            changed.append(str(f.get("path") if isinstance(f, dict) else f))
    return {"present": (run.out / "README.md").exists(), "recorded": True, "changed": changed}


def examples(run: Run, n: int) -> list[dict]:
    if run.shards is None or n <= 0:
        return []
    cols = [c for c in ("sample_id", "label", "teacher_pred", "student_pred", "teacher_conf", "kl_ts", "rank")
            if c in run.shards.column_names]
    cols += [c for c in run.shards.column_names if c.startswith(SCORE_PREFIX)]
    kept = run.shards.select(cols).filter(pa.array(~generated_rows(run)))  # not the rows HARD generated
    return best_first(run, kept).slice(0, n).to_pylist()


def best_first(run: Run, rows: pa.Table) -> pa.Table:
    """Rows in shard order (best ranked first), or by the ranker's score, highest first, where the rows carry
    no rank (a generated dataset: the critic's P(accept))."""
    score = primary_score(run)
    if ("rank" in rows.column_names and rows.column("rank").null_count < rows.num_rows) or score not in rows.column_names:
        return rows
    return rows.sort_by([(score, "descending")])


def rejected_examples(run: Run, n: int) -> list[dict]:
    """Up to ``n`` rejected rows, spread over the rejection reasons (lowest ranker score first)."""
    if run.decisions is None or n <= 0:
        return []
    picks = pick_rejected(run, n)
    cols = [c for c in ("sample_id", "reason", "label", "label_idx", "teacher_pred", "student_pred", "teacher_conf",
                        "kl_ts") if c in run.decisions.column_names]
    cols += [c for c in run.decisions.column_names if c.startswith(SCORE_PREFIX)]
    rows = run.decisions.select(cols).take(pa.array(picks, pa.int64())).to_pylist() if picks else []
    out = []
    for r in rows:  # the web label as written (a causal-LM row's has no class index), else as a class name
        li, given = r.pop("label_idx", None), r.pop("label", None)
        out.append({"sample_id": r.pop("sample_id"), "reason": r.pop("reason"),
                    "label": given if given is not None else run.class_name(li) if li is not None and li >= 0 else None,
                    **r})
    return out


def primary_score(run: Run) -> str | None:
    """The ranker's score column (the last method), else the first score column."""
    methods = run.manifest.get("methods") or []
    cols = score_columns(run)
    for m in reversed(methods):
        if f"{SCORE_PREFIX}{m}" in cols:
            return f"{SCORE_PREFIX}{m}"
    return cols[0] if cols else None


def pick_rejected(run: Run, n: int) -> list[int]:
    """Row indices of decisions: rejected rows, round-robin over grouped reasons, most clearly rejected first."""
    dec = run.decisions
    rows = np.flatnonzero(pc.equal(dec.column("decision"), REJECTED).to_numpy(zero_copy_only=False))
    if n <= 0 or not len(rows):
        return []
    # reason_group, vectorised: "duplicate_of:<id>" → "duplicate_of", null → "none"
    grouped = pc.fill_null(pc.replace_substring_regex(dec.column("reason").take(pa.array(rows)), pattern=":.*",
                                                      replacement=""), "none")
    enc = pc.dictionary_encode(grouped).combine_chunks()
    codes, names = enc.indices.to_numpy(zero_copy_only=False), enc.dictionary.to_pylist()
    col = primary_score(run)
    score = _col(dec, col).astype(np.float64) if col else np.zeros(dec.num_rows)
    score = np.where(np.isnan(score), np.inf, score)
    by_reason = {}
    for name in sorted(names):
        idx = rows[codes == names.index(name)]
        by_reason[name] = idx[np.lexsort((idx, score[idx]))][:n].tolist()
    picks: list[int] = []
    while len(picks) < n and any(by_reason.values()):
        for r in list(by_reason):
            if by_reason[r] and len(picks) < n:
                picks.append(by_reason[r].pop(0))
    return picks


# ------------------------------------------------------------------------------------------------

def summarise(out: str | Path, *, n_examples: int = 5, check: bool = True, n_quarantined: int = MAX_LISTED) -> dict:
    """A JSON-able summary of OUT (what ``kdata inspect --json`` prints; ``n_quarantined`` rows listed).

    ``integrity.ok`` is False when a shard or the decisions table is missing, has another size,
    sha256 or row count than the manifest records, cannot be read as Parquet, or when a count
    of the manifest differs from the one re-derived from the decisions table and the shards
    (``kdata.dataset.writer.verify``).
    """
    run = load_run(out)
    problems = verify(run.out) if check else []
    if run.shard_error:
        problems.append(f"{run.out}: {run.shard_error}")
    m = run.manifest
    models = m.get("models") or {}
    balance, agree = class_balance(run), agreement(run)
    return {
        "out": str(run.out),
        "counts": m.get("counts"),
        "decisions": decision_counts(run),
        "rows": run.shards.num_rows if run.shards is not None else None,
        "files": m.get("files", []),
        "methods": m.get("methods"),
        "budget_rows": m.get("budget_rows"),
        "pool": (m.get("pool") or {}).get("spec") or (m.get("config") or {}).get("pool"),
        "teacher": (models.get("teacher") or {}).get("spec"),
        "student": (models.get("student") or {}).get("spec"),
        "reference": (models.get("reference") or {}).get("spec"),  # MiniPLM's reference model, when one scored
        "config_hash": m.get("config_hash"),
        "class_names": run.class_names,  # teacher_pred / student_pred index them
        "class_balance": balance,
        "class_histogram": {r["class"]: r["kept_teacher"] for r in balance if r["kept_teacher"]},
        "score_quantiles": score_quantiles(run),
        "agreement": agree,
        "teacher_student_agreement": (agree.get(KEPT) or {}).get("teacher_student"),
        **quarantine_fields(run, n_quarantined),
        "integrity": {"ok": not problems, "problems": problems, "checked": check,
                      "files_checked": len(m.get("files") or []) if isinstance(m.get("files"), list) else 0,
                      "decisions_checksum": bool(m.get("decisions"))},
        "card": card_status(run),
        "examples": examples(run, n_examples),
        "rejected_examples": rejected_examples(run, n_examples),
        "text": _text_summary(run, n_examples),
    }


def _text_summary(run: Run, n: int) -> dict | None:
    from kdata.report.text_run import text_summary  # text runs: examples, domain mixture, perplexity

    return text_summary(run, n=n, pick=lambda k: pick_rejected(run, k), order=lambda rows: best_first(run, rows))


def sample(out: str | Path, sample_id: str) -> dict:
    """One sample's decision, reason and scores (decisions.parquet) and its curated row if kept."""
    run = load_run(out)
    found: dict = {"sample_id": sample_id}
    if run.decisions is not None:
        m = pc.equal(run.decisions.column("sample_id"), sample_id)
        rows = run.decisions.filter(m).to_pylist()
        if rows:
            found["decision_row"] = rows[0]
            found["decision"] = rows[0]["decision"]
            found["reason"] = rows[0].get("reason")
    hit = np.flatnonzero(pc.fill_null(pc.equal(run.shards.column("sample_id"), sample_id), False)
                         .to_numpy(zero_copy_only=False)) if run.shards is not None else []
    if len(hit):  # the first row with that id, every column in shard order (its payloads read for it alone)
        got = run.shards.slice(int(hit[0]), 1).to_pylist()[0]
        row = {c: got[c] if c in got else run.payload(c, hit[:1])[0] for c in run.shard_columns}
        if row.get("image") is not None:
            row["image"] = f"<{len(row['image'])} bytes>"
        found["shard_row"] = row
        found.setdefault("decision", "generated" if row.get("kind") == "synthetic" else KEPT)  # HARD rows
    if "decision" not in found:
        raise KdataError(f"{run.out}: no sample with id '{sample_id}' in decisions.parquet or the shards")
    tp = (found.get("shard_row") or found.get("decision_row") or {}).get("teacher_pred")
    found["teacher_class"] = run.class_name(tp) if tp is not None else None
    return found
