"""The data card's pictures: score histograms, class balance and a thumbnail grid (PNG files).

matplotlib's Agg canvas, no pyplot and no global backend switch, and no version string in the PNG
metadata, so the same run draws the same bytes. The thumbnail grid is one PIL image, ~20× faster
than one matplotlib axes per tile; rejected payloads are read back from the pool the manifest names.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from kdata.dataset.schema import KEPT, REJECTED
from kdata.report.inspect import MAX_BALANCE_ROWS, Run, class_balance, score_columns
from kdata.report.markdown import fmt, md_code, printable
from kdata.report.picks import best_kept, random_kept_by_class, rejected_picks
from kdata.report.pool_source import run_pool
from kdata.report.thumbs import pixel_cap, thumbnail

N_THUMBS = 16  # most clearly rejected rows
N_BEST = 8  # best-ranked kept rows
PER_CLASS, MAX_CLASSES = 4, 10  # random kept rows per class, for at most this many classes
TILE = 96  # a grid tile's side, in pixels


def _figure(w: float, h: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fig.savefig(tmp, format="png", metadata={"Software": None})  # no version string: reproducible bytes
    os.replace(tmp, path)


def plot_scores(run: Run, path: Path) -> bool:
    """Histograms of every decisions score column, kept vs rejected. False when there is nothing to plot."""
    cols = score_columns(run)
    if not cols:
        return False
    dec = np.array(run.decisions.column("decision").to_pylist(), dtype=object)
    fig = _figure(4.2 * len(cols), 3.2)
    for i, c in enumerate(cols):
        ax = fig.add_subplot(1, len(cols), i + 1)
        v = run.decisions.column(c).to_numpy(zero_copy_only=False).astype(np.float64)
        ok = ~np.isnan(v)
        if not ok.any():
            ax.set_title(f"{c}: no values")
            continue
        lo, hi = np.quantile(v[ok], [0.0, 0.99]) if c == "kl_ts" else (v[ok].min(), v[ok].max())
        bins = np.linspace(lo, hi if hi > lo else lo + 1e-6, 31)
        for d, color in ((REJECTED, "tab:red"), (KEPT, "tab:blue")):
            x = np.clip(v[ok & (dec == d)], lo, hi)
            ax.hist(x, bins=bins, alpha=0.55, color=color, label=f"{d} ({len(x)})")
        ax.set_title(c + (" (clipped at p99)" if c == "kl_ts" else ""), fontsize=9)
        ax.set_ylabel("samples", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7)
    fig.subplots_adjust(left=0.06, right=0.99, bottom=0.1, top=0.9, wspace=0.3)
    _save(fig, path)
    return True


def plot_balance(run: Run, path: Path) -> bool:
    """Class shares per series: grouped bars per class, or, above ``MAX_BALANCE_ROWS`` classes,
    lines over the classes ranked by pool share (a bar per class does not scale to C = 1000)."""
    bal = class_balance(run)
    if not bal:
        return False
    series = [("pool, web label", "pool_label", "tab:gray"), ("pool, teacher", "pool_teacher", "tab:orange"),
              ("kept, teacher", "kept_teacher", "tab:blue")]
    series = [s for s in series if any(r[s[1]] is not None for r in bal)]
    many = len(bal) > MAX_BALANCE_ROWS
    fig = _figure(8.0 if many else max(5.0, 0.45 * len(bal) * len(series)), 3.4)
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(bal))
    keys = [k for _, k, _ in series]
    ref = "pool_teacher" if "pool_teacher" in keys else keys[0]
    order = np.argsort(-np.array([r[ref] or 0 for r in bal], dtype=np.float64), kind="stable") if many else x
    w = 0.8 / max(1, len(series))
    for j, (label, key, color) in enumerate(series):
        counts = np.array([r[key] or 0 for r in bal], dtype=np.float64)[order]
        total = counts.sum()
        share, label = (counts / total if total else counts), f"{label} (n={int(total)})"
        if many:
            ax.step(x, share, where="mid", color=color, lw=0.9, label=label)
        else:
            ax.bar(x + (j - (len(series) - 1) / 2) * w, share, width=w, color=color, label=label)
    if many:
        ax.set_xlabel(f"class, ranked by {ref.replace('_', ' ')} share ({len(bal)} classes)")
    else:
        ax.set_xticks(x)
        ax.set_xticklabels([printable(r["class"]) for r in bal], fontsize=7, rotation=90 if len(bal) > 20 else 0)
    ax.set_ylabel("share of rows")
    ax.set_title("class balance before and after curation", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path)
    return True


def _decode(data: bytes | None, max_pixels: int | None = None):
    """A tile's pixels (RGB, at most ``TILE`` a side: ``kdata.report.thumbs.thumbnail``, which refuses an
    image over the pixel cap from its header), or None: an unreadable payload is a blank tile."""
    im = thumbnail(data, TILE, rgb=True, max_pixels=max_pixels)
    return None if im is None else np.asarray(im)


def fetch_payloads(run: Run, ids: list[str], *, pool=None) -> tuple[dict[str, bytes], str | None]:
    """Image bytes for ``ids``: from the shards, then from the run's own pool (``pool``, else the recorded spec
    when ``pool_source.run_pool`` finds it unchanged). Returns (found, note)."""
    found: dict[str, bytes] = {}
    if not ids:
        return found, None
    if run.shards is not None and "image" in run.shard_columns:  # the shards' row groups holding them, image alone
        found.update(run.payloads_of("image", ids))
    missing = [i for i in ids if i not in found]
    if not missing:
        return found, None
    spec = (run.manifest.get("config") or {}).get("pool")
    if not spec:  # even when the run passes a pool: ``kdata card DIR`` could not read it, and must draw the same
        return found, "Rejected samples are not pictured: the run recorded no pool to read their payload from."
    pool, why = (pool, None) if pool is not None else run_pool(run, spec)
    if pool is None:  # moved, deleted or not the run's own pool: the card says so instead of failing
        return found, f"Rejected samples are not pictured: the pool {md_code(spec)} {why}."
    want = set(missing)
    try:
        for unit in pool.units:  # only the rows wanted: ``take_ids`` finds them from the unit's ids
            t = unit.take_ids(want)
            if "image" not in t.column_names:
                continue
            found.update({i: v for i, v in zip(t.column("sample_id").to_pylist(), t.column("image").to_pylist())
                          if v is not None})
            if all(i in found for i in missing):
                break
    except Exception as exc:
        return found, (f"Some rejected samples are not pictured: reading the pool {md_code(spec)} failed "
                       f"({type(exc).__name__}).")
    lost = [i for i in missing if i not in found]
    note = f"{len(lost)} rejected sample(s) are not pictured: no image payload in the pool {md_code(spec)}." if lost \
        else None
    return found, note


def thumbnail_blocks(run: Run, *, n: int = N_THUMBS) -> list[tuple[str, list[dict], tuple[int, int, int]]]:
    """The grid's blocks: best-ranked kept, a random sample of kept rows per class (the best-ranked
    alone are not representative: an informative-first ranker puts ambiguous, junk-like rows on
    top), and the ``n`` most clearly rejected rows by reason. Each row gets its tile ``slot``."""
    best: list[dict] = []
    rnd: list[dict] = []
    if run.shards is not None and "image" in run.shard_columns:
        best = best_kept(run, N_BEST)
        rnd = random_kept_by_class(run, per_class=PER_CLASS, max_classes=MAX_CLASSES,
                                   exclude=[r["sample_id"] for r in best])
        classes: dict = {}
        for r in rnd:  # each class starts on its own group of PER_CLASS tiles
            j = classes.setdefault(r["teacher_pred"], [len(classes), 0])
            r["slot"], j[1] = j[0] * PER_CLASS + j[1], j[1] + 1
    rej = rejected_picks(run, n)
    return [("best-ranked kept", best, (31, 119, 180)),
            (f"random kept rows, up to {PER_CLASS} per class", rnd, (44, 160, 44)),
            ("most clearly rejected, by reason", rej, (214, 39, 40))]


def _caption(run: Run, row: dict, i: int) -> tuple[str, str]:
    cls = run.class_name(row.get("teacher_pred"))
    if row.get("random"):
        return f"random, T={cls}", f"p={fmt(row.get('teacher_conf'), 2)}"
    if "reason" not in row:
        return f"kept #{row.get('rank', i)}", f"T={cls} p={fmt(row.get('teacher_conf'), 2)}"
    reason = str(row.get("reason") or "?")
    return reason if len(reason) <= 18 else reason[:17] + "…", f"T={cls} s={fmt(row.get('score'), 2)}"


def thumbnail_grid(run: Run, path: Path, *, n: int = N_THUMBS, pool=None, blocks=None,
                   images: dict[str, bytes] | None = None, note: str | None = None) -> tuple[bool, str | None]:
    """One PNG of ``thumbnail_blocks`` with captions (rank or reason, teacher class, score).

    Drawn with PIL (one image, no per-tile plotting axes: ~50 ms instead of seconds). ``blocks``
    and ``images`` (payloads by sample_id, with their ``note``) may be passed by a caller that
    fetched them already. Returns (written, note); nothing is written without image payloads.
    """
    blocks = blocks if blocks is not None else thumbnail_blocks(run, n=n)
    rows_all = [r for _, rows, _ in blocks for r in rows]
    if images is None:
        images, note = fetch_payloads(run, [r["sample_id"] for r in rows_all], pool=pool)
    cap = pixel_cap(run.manifest)
    decoded = {r["sample_id"]: _decode(images.get(r["sample_id"]), cap) for r in rows_all}
    if not any(v is not None for v in decoded.values()):
        return False, "No thumbnails: the curated rows carry no image payload."
    from PIL import Image, ImageDraw, ImageFont

    ncol, tile, cap, pad, head = 8, TILE, 30, 6, 26
    cell_w, cell_h = tile + pad, tile + cap + pad
    blocks = [b for b in blocks if b[1] or not b[0].startswith("random")]  # no empty random block
    slots = [[r.get("slot", i) for i, r in enumerate(rows)] for _, rows, _ in blocks]
    heights = [head + max(1, -(-(max(s, default=0) + 1) // ncol)) * cell_h for s in slots]
    canvas = Image.new("RGB", (pad + ncol * cell_w, sum(heights) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    font, small = ImageFont.load_default(size=13), ImageFont.load_default(size=10)
    y0 = pad
    for (title, rows, color), h, slot in zip(blocks, heights, slots):
        draw.text((pad, y0 + 4), f"{title} ({len(rows)})" if rows else f"{title}: none", fill=color, font=font)
        for i, (row, s) in enumerate(zip(rows, slot)):
            x, y = pad + (s % ncol) * cell_w, y0 + head + (s // ncol) * cell_h
            img = decoded.get(row["sample_id"])
            if img is not None:
                canvas.paste(Image.fromarray(img).resize((tile, tile), Image.NEAREST), (x, y))
            else:
                draw.text((x + 8, y + tile // 2 - 6), "not available", fill=(90, 90, 90), font=small)
            draw.rectangle((x - 1, y - 1, x + tile, y + tile), outline=color, width=2)
            for k, line in enumerate(_caption(run, row, i)):
                draw.text((x, y + tile + 3 + 12 * k), line, fill=color, font=small)
        y0 += h
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    canvas.save(tmp, format="PNG")
    os.replace(tmp, path)
    return True, note
