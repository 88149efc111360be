"""``report.html``: a static, self-contained page to browse what a run kept and rejected.

Written beside the card by every run and by ``kdata card DIR``. One file, no server and no
network: the counts and tables are plain HTML, the sampled rows are JSON embedded in the page,
thumbnails are ``data:`` URIs, and a few lines of vanilla JavaScript filter them by decision,
reason and class and sort them by score (``kdata.report.html_page``). A Content-Security-Policy
forbids every fetch, so opening the page can never reach the network.

The page stays small whatever the pool size: it shows a random sample of at most ``PER_REASON``
rows of each decision/reason group (``kdata.report.picks.report_sample``) and at most
``MAX_ROWS`` rows in all, and says how many of each group it shows.
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from kdata.core.atomic import write_bytes
from kdata.core.errors import printable
from kdata.dataset.schema import QUARANTINED
from kdata.report.html_page import PAGE
from kdata.report.inspect import Run, class_balance, decision_counts, primary_score
from kdata.report.markdown import fmt
from kdata.report.picks import report_sample
from kdata.report.thumbs import pixel_cap, thumbnail

__all__ = ["MAX_ROWS", "PER_REASON", "REPORT", "THUMB_PX", "quarantine_errors", "render_report", "report_rows",
           "thumb_uri", "write_report"]

REPORT = "report.html"
PER_REASON = 200  # sampled rows per decision/reason group
MAX_ROWS = 3000  # sampled rows in all (fewer per group when the groups are many)
THUMB_PX = 64  # longest side of an embedded thumbnail


def report_rows(run: Run) -> list[dict]:
    """The rows the report shows (a bounded, seeded sample of every decision and reason)."""
    return report_sample(run, per_group=PER_REASON, max_rows=MAX_ROWS)


def thumb_uri(data: bytes | None, *, max_pixels: int | None = None) -> str | None:
    """A small PNG or JPEG ``data:`` URI of an encoded image (whichever is smaller), or None (no payload, an
    unreadable one, or one over the pixel cap: ``kdata.report.thumbs.thumbnail``)."""
    im = thumbnail(data, THUMB_PX, max_pixels=max_pixels)
    if im is None:
        return None
    best = None
    for fmt_, kw in (("PNG", {}), ("JPEG", {"quality": 80})):
        buf = io.BytesIO()
        im.save(buf, format=fmt_, **kw)
        if best is None or len(buf.getvalue()) < len(best[1]):
            best = (fmt_.lower(), buf.getvalue())
    return f"data:image/{best[0]};base64,{base64.b64encode(best[1]).decode()}"


def quarantine_errors(run: Run, ids: list[str]) -> dict[str, str]:
    """sample_id → the full error of the quarantined rows among ``ids`` (decisions.parquet)."""
    d = run.decisions
    if d is None or not ids or "error" not in d.column_names:
        return {}
    hit = d.filter(pc.fill_null(pc.is_in(d.column("sample_id"), value_set=pa.array(ids, pa.string())), False))
    hit = hit.filter(pc.equal(hit.column("decision"), QUARANTINED)).select(["sample_id", "error"])
    return {r["sample_id"]: r["error"] for r in hit.to_pylist() if r["error"] is not None}


def _stages(dc: dict) -> list[tuple[str, int | None, str]]:
    """(label, count, key) rows of the stage table, the same rows as the card's counts table."""
    n_in = dc["n_in"] or 0
    rows = [("in (pool samples)", n_in, "n_in"), ("quarantined (unreadable)", dc["quarantined"], "quarantined"),
            ("scored", n_in - (dc["quarantined"] or 0), "scored")]
    rows += [(f"rejected: {r}", n, f"reason-{r}") for r, n in dc["rejected_by_reason_group"].items()]
    rows += [("rejected (total)", dc["rejected"], "rejected"), ("generated (HARD)", dc["generated"], "generated"),
             ("generated kept (in shards)", dc["generated_kept"], "generated_kept"), ("kept", dc["kept"] or 0, "kept")]
    return rows


def _h(text) -> str:
    """HTML-escaped, with control characters (ESC, BEL…) shown as ``\\xNN``: the page is also read with
    ``cat`` and ``less``, where a raw escape would drive the terminal."""
    return html.escape(printable(text))


def _table(header: list[str], rows: list[list], *, row_ids: list[str] | None = None, tid: str) -> str:
    head = "".join(f"<th>{_h(h)}</th>" for h in header)
    body = []
    for i, r in enumerate(rows):
        rid = f' data-key="{html.escape(row_ids[i])}"' if row_ids else ""  # matched by the page's script: as is
        cells = "".join(f"<td>{_h(fmt(v))}</td>" for v in r)
        body.append(f"<tr{rid}>{cells}</tr>")
    return f'<table id="{tid}"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def _embed(obj) -> str:
    """JSON that is safe inside a ``<script>`` element (no ``<``, ``>`` or ``&`` characters)."""
    text = json.dumps(obj, sort_keys=True, ensure_ascii=True, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render_report(run: Run, *, name: str, rows: list[dict], images: dict[str, bytes], texts: dict[str, str] | None = None,
                  card: str = "README.md", note: str | None = None) -> str:
    """The page's HTML for ``rows`` (from ``report_rows``) with thumbnails from ``images`` or, for text runs,
    snippets from ``texts`` (sample_id → text); ``card`` is the relative link to the data card, ``note``
    says why some rows have neither."""
    m, dc = run.manifest, decision_counts(run)
    models = m.get("models") or {}
    cfg = m.get("config") or {}
    groups: dict[str, int] = {"kept": int(dc["kept"] or 0), **dc["rejected_by_reason_group"]}
    if dc["quarantined"]:
        groups["quarantined"] = int(dc["quarantined"])
    texts = texts or {}
    errors = quarantine_errors(run, [r["id"] for r in rows if r["decision"] == QUARANTINED])
    cap = pixel_cap(m)
    rows = [{**r, "thumb": thumb_uri(images.get(r["id"]), max_pixels=cap), "text": texts.get(r["id"]), "error": errors.get(r["id"])}
            for r in rows]
    shown: dict[str, int] = {}
    for r in rows:
        shown[r["group"]] = shown.get(r["group"], 0) + 1
    stages = _stages(dc)
    balance = class_balance(run)
    meta = [("methods", ", ".join(m.get("methods") or []) or "?"),
            ("pool", (m.get("pool") or {}).get("spec") or cfg.get("pool")),
            ("teacher", (models.get("teacher") or {}).get("spec", cfg.get("teacher"))),
            ("student", (models.get("student") or {}).get("spec", cfg.get("student"))),
            ("budget", f"{cfg.get('budget')} ({m.get('budget_rows')} rows)"),
            ("balance", m.get("balance", cfg.get("balance"))), ("config hash", m.get("config_hash"))]
    data = {"groups": groups, "shown": shown, "rows": rows, "score": primary_score(run),
            "classes": [b["class"] for b in balance], "note": note, "text": bool(texts)}
    sections = {
        "__TITLE__": html.escape(f"{name}: kdata curation report"),
        "__NAME__": html.escape(name),
        "__CARD__": html.escape(card),
        "__META__": "".join(f"<dt>{_h(k)}</dt><dd>{_h(fmt(v))}</dd>" for k, v in meta),
        "__COUNTS__": _table(["stage", "samples"], [[s, n] for s, n, _ in stages], row_ids=[k for _, _, k in stages],
                             tid="counts"),
        "__BALANCE__": _table(["class", "pool, web label", "pool, teacher", "kept, teacher"],
                              [[b["class"], b["pool_label"], b["pool_teacher"], b["kept_teacher"]] for b in balance],
                              tid="balance"),
        "__DATA__": _embed(data),
    }
    # one pass over the template: a value that happens to contain a placeholder is left alone
    return re.sub(r"__[A-Z]+__", lambda mt: sections.get(mt.group(0), mt.group(0)), PAGE)


def write_report(run: Run, path: Path, *, name: str, rows: list[dict], images: dict[str, bytes],
                 texts: dict[str, str] | None = None, card: str = "README.md", note: str | None = None) -> None:
    """Write ``report.html`` (atomically)."""
    page = render_report(run, name=name, rows=rows, images=images, texts=texts, card=card, note=note)
    write_bytes(path, page.encode("utf-8"))

