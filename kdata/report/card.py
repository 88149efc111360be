"""Data cards: ``README.md`` with Hugging Face dataset-card front matter, PNG plots and ``report.html``.

Everything on the card is read back from what the run wrote (``manifest.json``, ``decisions.parquet``,
the shards), so ``kdata card DIR`` regenerates the same card, byte for byte, that the run wrote.
The card holds no absolute paths and no wall-clock time except the manifest's creation time, so a
dataset directory can be moved or uploaded as-is (``configs``/``data_files`` make ``datasets`` load it).

The text lives in ``kdata.report.card_text`` (front matter, one function per Markdown section),
the pictures in ``kdata.report.card_plots``:

* ``card-scores.png``        score histograms, kept vs rejected, for every scored row;
* ``card-class-balance.png`` class shares before (pool) and after (kept) curation;
* ``card-thumbnails.png``    the best-ranked kept images, a random sample of kept images per class and
  the most clearly rejected images with their reasons (rejected payloads are read back from the
  run's own pool: a recorded spec only while its unit fingerprints match, ``kdata.report.pool_source``);
* ``report.html``            a static page to browse kept and rejected samples (``kdata.report.html``).

The pool is read once for the thumbnails of both. This module writes, regenerates and publishes cards.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from kdata.core.atomic import sha256_file
from kdata.core.errors import KdataError
from kdata.report.card_plots import (N_THUMBS, fetch_payloads, plot_balance, plot_scores, thumbnail_blocks,
                                     thumbnail_grid)
from kdata.report.card_text import SIZE_CATEGORIES, front_matter, read_front_matter, render_card, size_category
from kdata.report.html import REPORT, report_rows, write_report
from kdata.report.inspect import load_run
from kdata.report.pool_source import record_fingerprints
from kdata.report.text_run import is_text_run, report_texts

__all__ = ["CARD", "N_THUMBS", "PLOTS", "REPORT", "SIZE_CATEGORIES", "card_entry", "fetch_payloads", "front_matter",
           "plot_balance", "plot_scores", "publish", "read_front_matter", "regenerate", "render_card",
           "size_category", "thumbnail_grid", "write_card"]

CARD = "README.md"
PLOTS = {"scores": "card-scores.png", "balance": "card-class-balance.png", "thumbnails": "card-thumbnails.png"}

def write_card(out: str | Path, *, manifest: dict | None = None, name: str | None = None, pool=None,
               dest: str | Path | None = None, prefix: str = "") -> list[dict]:
    """Write the card, its plots and ``report.html`` for the dataset in ``out`` into ``dest`` (default: ``out``).

    ``name`` is the dataset name (default: the directory's name); ``manifest`` and ``pool`` can be
    passed by the pipeline, which writes the card inside its staging directory before the manifest:
    then the pool's unit fingerprints are recorded in ``manifest["pool"]`` (``pool_source``).
    ``prefix`` prefixes the plot and report file names (used when several cards share one
    directory). Returns the written files as manifest entries (path relative to ``dest``, bytes,
    sha256), card first.
    """
    out = Path(out)
    dest = Path(dest) if dest is not None else out
    dest.mkdir(parents=True, exist_ok=True)
    name = name or out.resolve().name
    if manifest is not None and pool is not None:  # the pipeline writes manifest.json after the card
        record_fingerprints(manifest, pool)  # what ``kdata card DIR`` checks before reading the pool back
    if manifest is not None:
        # the manifest as manifest.json will hold it (sorted keys, JSON values): the run's card and
        # ``kdata card DIR``'s, which reads manifest.json back, are then the same bytes
        manifest = json.loads(json.dumps(manifest, sort_keys=True, default=str))
    run = load_run(out, manifest=manifest)
    run.pool = pool
    if run.shard_error:
        raise KdataError(f"{out}: cannot write a card: {run.shard_error}")
    links: dict[str, str | None] = {}
    notes: dict[str, str] = {}
    written: list[str] = []
    for key, fn in (("scores", plot_scores), ("balance", plot_balance)):
        fname = prefix + PLOTS[key]
        links[key] = fname if fn(run, dest / fname) else None
        if links[key]:
            written.append(fname)
    blocks, rows = thumbnail_blocks(run), report_rows(run)
    ids = sorted({r["sample_id"] for _, b, _ in blocks for r in b} |  # quarantined: unreadable payloads
                 {r["id"] for r in rows if r["decision"] != "quarantined"})
    texts: dict[str, str] = {}
    if is_text_run(run):  # the report's tiles show each row's text; the card's text tables read their own
        images, fetch_note = {}, None
        texts, text_note = report_texts(run, [r["id"] for r in rows if r["decision"] != "quarantined"], pool=pool)
    else:
        images, fetch_note = fetch_payloads(run, ids, pool=pool)  # one pass over the pool for both
        text_note = None
    fname = prefix + PLOTS["thumbnails"]
    ok, note = thumbnail_grid(run, dest / fname, blocks=blocks, images=images, note=fetch_note)
    links["thumbnails"] = fname if ok else None
    if ok:
        written.append(fname)
    if note:
        notes["thumbnails"] = note
    card_name = f"{prefix}{CARD}" if not prefix else f"{prefix.rstrip('-_')}.md"
    links["report"] = prefix + REPORT
    write_report(run, dest / links["report"], name=name, rows=rows, images=images, texts=texts, card=card_name,
                 note=fetch_note or text_note)
    written.append(links["report"])
    text = render_card(run, name=name, plots=links, notes=notes)
    from kdata.core.atomic import write_bytes

    write_bytes(dest / card_name, text.encode("utf-8"))
    return [{"path": p, "bytes": (dest / p).stat().st_size, "sha256": sha256_file(dest / p)}
            for p in [card_name] + written]


def card_entry(files: list[dict]) -> dict:
    """The manifest's ``card`` key: the card and its plots with checksums (not part of ``files``)."""
    return {"path": files[0]["path"], "files": files}


def publish(out: str | Path, card_dir: str | Path, *, name: str | None = None) -> Path:
    """Copy the card of ``out`` to ``card_dir/<name>.md`` with its plots as ``<name>-card-*.png`` and
    its report as ``<name>-report.html``."""
    out = Path(out)
    name = name or out.resolve().name
    try:
        files = write_card(out, dest=card_dir, name=name, prefix=f"{name}-")
    except OSError as exc:  # a card directory that cannot be made or written: the user's path, one line
        raise KdataError(f"--card-dir {card_dir}: cannot write the card there ({exc.strerror or exc})") from None
    return Path(card_dir) / files[0]["path"]


LICENSE_ID = re.compile(r"[a-z0-9][a-z0-9.+-]{0,63}")  # Hugging Face licence ids: cc-by-4.0, mit, other…


def card_license(out: Path, manifest: dict, *, given: str | None) -> str | None:
    """The licence the rewritten card states: ``given`` (``kdata card --license``), else the one already
    recorded in the manifest, else one set by hand in the current card's front matter (the card asks
    for that, so a rewrite keeps it); None when none is known."""
    if given is not None:
        if not LICENSE_ID.fullmatch(given):
            raise KdataError(f"--license {given!r}: expected a licence id as the Hugging Face Hub writes it "
                             "(lowercase, e.g. cc-by-4.0, mit, other)")
        return given
    if isinstance(manifest.get("license"), str) and LICENSE_ID.fullmatch(manifest["license"]):
        return manifest["license"]
    card = out / ((manifest.get("card") or {}).get("path") or CARD)
    try:
        lic = read_front_matter(card.read_text(encoding="utf-8")).get("license")
    except (OSError, UnicodeDecodeError, KdataError, ValueError):
        return None  # no card, or one past reading: nothing set by hand to keep
    return lic if isinstance(lic, str) and lic != "unknown" and LICENSE_ID.fullmatch(lic) else None


def regenerate(out: str | Path, *, card_dir: str | Path | None = None, license_id: str | None = None) -> dict:
    """``kdata card DIR``: rewrite the card beside the shards, record it in the manifest, optionally publish.
    The licence (``license_id``, or one already set: ``card_license``) is recorded in the manifest and stated
    by the card."""
    from kdata.core.atomic import write_json
    from kdata.dataset.manifest import MANIFEST, curated_manifest
    from kdata.dataset.writer import verify

    out = Path(out)
    manifest = curated_manifest(out)
    problems = verify(out)
    if problems:
        raise KdataError(f"{out}: integrity check failed, not writing a card: {problems[0]}", exit_code=1)
    lic = card_license(out, manifest, given=license_id)
    new_license = lic is not None and manifest.get("license") != lic
    if new_license:
        manifest = {**manifest, "license": lic}
    base = {k: v for k, v in manifest.items() if k != "card"}
    files = write_card(out, manifest=base)
    stale = {f["path"] for f in (manifest.get("card") or {}).get("files", [])} - {f["path"] for f in files}
    for p in stale & set(PLOTS.values()):  # a plot no longer drawn; never a name the card does not write
        (out / p).unlink(missing_ok=True)
    if manifest.get("card") != card_entry(files) or new_license:
        write_json(out / MANIFEST, {**manifest, "card": card_entry(files)})
    result = {"card": str(out / files[0]["path"]), "report": str(out / REPORT), "files": [f["path"] for f in files]}
    if card_dir is not None:
        result["published"] = str(publish(out, card_dir))
    return result

