"""What a text run's card and ``kdata inspect`` show: text examples, domain mixture, perplexity quantiles.

* **examples** — the best-ranked kept texts (from the shards) and rejected texts with their reasons,
  spread over the reasons like the image card's thumbnails (``kdata.report.inspect.pick_rejected``);
  rejected texts are read back from the run's own pool (``kdata.report.pool_source``; only their rows); ``run`` is a
  ``kdata.report.inspect.Run`` and ``pick(n)`` its ``pick_rejected`` (passed in: inspect imports this);
* **domain mixture** — rows per ``domain`` in the pool (every input sample; its domain column read
  alone) and in the kept set;
* **perplexity quantiles** — exp(mean token NLL) of teacher, student and reference at 10 / 50 / 90 %
  over the scored pool (``decisions.parquet`` carries the NLLs of every scored row) and the kept set.

A pool that can no longer be read (moved, deleted) leaves the pool columns empty with a note: the
rest comes from what the run wrote.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from kdata.dataset.schema import QUARANTINED
from kdata.report.markdown import Md, fmt, md_code, md_table, printable
from kdata.report.pool_source import run_pool

NLL_COLUMNS = (("teacher", "teacher_nll"), ("student", "student_nll"), ("reference", "reference_nll"))
PPL_QUANTILES = (("p10", 0.1), ("p50", 0.5), ("p90", 0.9))
SNIPPET = 160
REPORT_SNIPPET = 400  # characters of each row's text on report.html's tiles


def is_text_run(run) -> bool:
    """The curated rows carry text (and no images)."""
    return run.shards is not None and run.has_values("text") and not run.has_values("image")  # payloads unread


def _run_pool(run) -> tuple[object | None, dict | None, str | None]:
    """(the run's own pool — ``pool_source.run_pool`` —, rows per domain value over it (None: no domain),
    None), or (None, None, why not). Only the ``domain`` column is read (``PoolUnit.read_column``)."""
    spec = _spec(run)
    if not spec:
        return None, None, "no pool recorded in the manifest"
    pool, why = run_pool(run, spec)
    if pool is None:
        return None, None, f"pool {md_code(spec)} could not be read back: it {why}; pool columns left empty"
    try:
        counts: dict = {}
        for unit in pool.units:
            plan = unit.plan()
            dom = plan.read_column("domain")
            if dom is None:
                vc = [(None, plan.num_rows)] if plan.num_rows else []
            else:
                v = pc.value_counts(dom.cast(pa.string()))
                vc = zip(v.field("values").to_pylist(), v.field("counts").to_pylist())
            for value, n in vc:
                counts[value] = counts.get(value, 0) + n
        return pool, counts, None
    except Exception as exc:  # noqa: BLE001  (the pool is gone or changed: the card says so, once)
        return None, None, _unreadable(spec, exc)


def _spec(run) -> str | None:
    return (run.manifest.get("pool") or {}).get("spec") or (run.manifest.get("config") or {}).get("pool")


def _unreadable(spec: str, exc: Exception) -> str:
    return f"pool {md_code(spec)} could not be read back ({type(exc).__name__}); pool columns left empty"


def _pool_texts(pool, ids: list[str]) -> dict:
    """sample_id → text of ``ids`` in the pool, reading only their rows (``PoolUnit.take_ids``);
    stops at the unit where the last of them is found."""
    want, found = set(ids), {}
    for unit in pool.units:
        if not want:
            break
        t = unit.take_ids(want)
        if "text" in t.column_names:
            found.update(zip(t.column("sample_id").to_pylist(), t.column("text").to_pylist()))
        want -= found.keys()
    return found


def _ppl(nll: np.ndarray) -> dict | None:
    v = nll[~np.isnan(nll)]
    if not len(v):
        return None
    q = np.exp(np.quantile(v, [p for _, p in PPL_QUANTILES]))
    return {**{k: float(x) for (k, _), x in zip(PPL_QUANTILES, q)}, "n": int(len(v))}


def _float_col(t: pa.Table | None, name: str) -> np.ndarray | None:
    if t is None or name not in t.column_names:
        return None
    return t.column(name).to_numpy(zero_copy_only=False).astype(np.float64)


def perplexity_quantiles(run) -> dict:
    """{model: {"pool": {p10, p50, p90, n}, "kept": {...}}} for the models whose NLL the run stored."""
    out = {}
    dec = run.decisions
    scored = None if dec is None else dec.filter(pc.not_equal(dec.column("decision"), QUARANTINED))
    for who, col in NLL_COLUMNS:
        pool, kept = _float_col(scored, col), _float_col(run.shards, col)
        if pool is None and kept is None:
            continue
        out[who] = {"pool": _ppl(pool) if pool is not None else None, "kept": _ppl(kept) if kept is not None else None}
    return out


def domain_mixture(run, pool_counts: dict | None) -> list[dict]:
    """Rows per domain in the pool (all input samples; ``pool_counts``: rows per domain value, None
    for none) and in the kept set, with shares."""
    kept = run.shards.column("domain").to_pylist() if "domain" in run.shards.column_names else []
    if not any(x is not None for x in kept) and not any(d is not None for d in pool_counts or {}):
        return []
    from collections import Counter

    by_pool, by_kept = Counter(), Counter(map(str, kept))  # one pass each, not one per domain
    for value, n in (pool_counts or {}).items():
        by_pool[str(value)] += n
    names = sorted(set(by_pool) | set(by_kept), key=lambda s: (s == "None", s))
    nb, nk = sum(by_pool.values()), len(kept)
    rows = []
    for name in names:
        b = by_pool[name] if pool_counts is not None else None
        k = by_kept[name]
        rows.append({"domain": "(none)" if name == "None" else name, "pool": b,
                     "pool_share": b / nb if b is not None and nb else None, "kept": k,
                     "kept_share": k / nk if nk else None})
    return rows


def _snippet(text: str | None) -> str:
    """Whitespace collapsed, control characters shown as ``\\xNN``, at most ``SNIPPET`` characters."""
    return printable(" ".join((text or "").split())[:SNIPPET])


def text_examples(run, texts_of=None, *, n: int = 5, pick=None, order=None) -> tuple[list[dict], list[dict]]:
    """(best-ranked kept texts — ``order(rows)`` sorts them where they carry no rank —, rejected texts with
    reasons — spread over the reasons by ``pick(n)``, their texts from ``texts_of(ids)`` (a dict; by
    default the dataset's ``excluded.parquet``)."""
    s = run.shards
    cols = [c for c in ("sample_id", "rank", "domain") if c in s.column_names]
    score = [c for c in s.column_names if c.startswith("score_")]
    rows = (order or (lambda t: t))(s.select(cols + score).append_column("__row", pa.array(np.arange(s.num_rows))))
    rows = rows.slice(0, n).to_pylist()
    texts = run.payload("text", [r.pop("__row") for r in rows])  # the shown rows' texts alone
    kept = [{k: v for k, v in r.items() if not k.startswith("score_")} | {"text": _snippet(t)}
            for r, t in zip(rows, texts)]
    rejected = []
    if run.decisions is not None and pick is not None:
        picks = pick(n)
        rows = run.decisions.select(["sample_id", "reason"]).take(pa.array(picks, pa.int64())).to_pylist()
        ids = [r["sample_id"] for r in rows]
        texts = texts_of(ids) if texts_of is not None else _excluded_texts(run, ids)
        for r in rows:
            text = texts.get(r["sample_id"])
            rejected.append({**r, "text": _snippet(text) if text is not None else None})
    return kept, rejected


def _excluded_texts(run, ids: list[str]) -> dict:
    """The texts of rows not kept, from the dataset's own exclusion file (``kdata generate`` writes
    ``excluded.parquet`` with every candidate it did not keep); {} where there is none."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    path = run.out / "excluded.parquet"
    try:
        t = pq.read_table(path, columns=["sample_id", "text"])
    except (OSError, KeyError, pa.ArrowException):
        return {}
    t = t.filter(pc.is_in(t.column("sample_id"), value_set=pa.array(ids, pa.string())))
    return dict(zip(t.column("sample_id").to_pylist(), t.column("text").to_pylist()))


def report_texts(run, ids: list[str], *, pool=None, chars: int = REPORT_SNIPPET) -> tuple[dict[str, str], str | None]:
    """sample_id → a snippet of its text for the report's tiles (``ids``: the sampled rows): kept rows from the
    shards, the others from the run's own pool (``pool``, else the recorded spec while unchanged) or, for a
    generated dataset, its ``excluded.parquet``. Returns (texts, note — why some have none)."""
    found: dict[str, str] = {}
    if not ids:
        return found, None
    found.update(run.payloads_of("text", ids))
    missing = [i for i in ids if i not in found]
    note = None
    if missing:
        spec = _spec(run)
        if pool is None and spec:
            pool, why = run_pool(run, spec)
            note = None if pool is not None else f"the pool {spec} could not be read back: it {why}"
        try:
            more = _pool_texts(pool, missing) if pool is not None else _excluded_texts(run, missing)
        except Exception as exc:  # noqa: BLE001  (the pool is gone or changed: the page says so, once)
            more, note = _excluded_texts(run, missing), f"reading the pool {spec} failed ({type(exc).__name__})"
        found.update({i: t for i, t in more.items() if t is not None})
        lost = sum(i not in found for i in missing)
        if lost and note is None:
            note = f"{lost} sampled row(s) have no text to show"
    return {i: printable(" ".join(t.split())[:chars]) for i, t in found.items()}, note and f"Texts: {note}."


def text_summary(run, *, n: int = 5, pick=None, order=None) -> dict | None:
    """The text sections of a run (None for image runs): examples, domain mixture, perplexity quantiles."""
    if not is_text_run(run):
        return None
    pool, counts, note = _run_pool(run)
    failed: list[Exception] = []

    def texts_of(ids: list[str]) -> dict:
        try:
            return _pool_texts(pool, ids)
        except Exception as exc:  # noqa: BLE001  (a rejected row's payload cannot be read back: said once)
            failed.append(exc)
            return _excluded_texts(run, ids)

    kept, rejected = text_examples(run, texts_of if pool is not None else None, n=n, pick=pick, order=order)
    if failed:
        counts, note = None, _unreadable(_spec(run), failed[0])
    return {"kept_texts": kept, "rejected_texts": rejected, "domain_mixture": domain_mixture(run, counts),
            "perplexity": perplexity_quantiles(run), "note": note}


def text_card_lines(s: dict | None) -> list[str]:
    """The card's Markdown for a text run's ``text_summary`` (empty for image runs: None)."""
    if not s:
        return []
    L = ["## Text examples", "", "Best-ranked kept texts (first 160 characters, whitespace collapsed):", ""]
    L += md_table(["rank", "sample_id", "text"], [[r.get("rank"), md_code(r["sample_id"]), _cell(r["text"])]
                                                  for r in s["kept_texts"]]) + [""]
    if s["rejected_texts"]:
        L += ["Rejected texts, spread over the reasons (most clearly rejected first):", ""]
        L += md_table(["reason", "sample_id", "text"], [[md_code(r["reason"]), md_code(r["sample_id"]), _cell(r["text"])]
                                                        for r in s["rejected_texts"]]) + [""]
    if s["domain_mixture"]:
        L += ["## Domain mixture before and after", ""]
        L += md_table(["domain", "pool", "kept"], [[r["domain"], _share(r["pool"], r["pool_share"]),
                                                     _share(r["kept"], r["kept_share"])] for r in s["domain_mixture"]])
        L += [""]
    if s["perplexity"]:
        L += ["## Perplexity", "", "Perplexity exp(mean token NLL) per text at 10 / 50 / 90 %, the scored pool vs "
              "the kept set:", ""]
        rows = []
        for who, v in s["perplexity"].items():
            for where in ("pool", "kept"):
                q = v.get(where) or {}
                rows.append([who, where, q.get("n"), *(fmt(q.get(k), 2) if q else None for k, _ in PPL_QUANTILES)])
        L += md_table(["model", "rows", "n", "p10", "p50", "p90"], rows) + [""]
    if s.get("note"):
        L += [f"Note: {s['note']}.", ""]
    return L


def _cell(text: str | None) -> Md:
    return Md("–") if text is None else md_code(text)


def _share(n, share) -> str | None:
    return None if n is None else f"{n} ({100 * share:.1f}%)" if share is not None else str(n)


__all__ = ["domain_mixture", "is_text_run", "perplexity_quantiles", "report_texts", "text_card_lines", "text_examples",
           "text_summary"]
