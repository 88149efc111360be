"""Data cards: ``README.md`` with Hugging Face dataset-card front matter, plus PNG plots, beside the shards.

Everything on the card is read back from what the run wrote (``manifest.json``, ``decisions.parquet``,
the shards), so ``kdata card DIR`` regenerates the same card, byte for byte, that the run wrote.
The card holds no absolute paths and no wall-clock time except the manifest's creation time, so a
dataset directory can be moved or uploaded as-is (``configs``/``data_files`` make ``datasets`` load it).

Plots (matplotlib's Agg canvas, no pyplot and no global backend switch; the thumbnail grid is one
PIL image, ~20× faster than one matplotlib axes per tile):

* ``card-scores.png``        score histograms, kept vs rejected, for every scored row;
* ``card-class-balance.png`` class shares before (pool) and after (kept) curation;
* ``card-thumbnails.png``    the best-ranked kept images and the most clearly rejected images with
  their reasons (rejected payloads are read back from the pool recorded in the manifest).
"""

from __future__ import annotations

import datetime as _dt
import io
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import yaml

from kdata.core.atomic import sha256_file
from kdata.dataset.schema import KEPT, REJECTED
from kdata.core.errors import KdataError
from kdata.report.inspect import MAX_BALANCE_ROWS, Run, agreement, balance_highlights, class_balance, decision_counts, load_run, pick_rejected, primary_score, quarantined_rows, score_columns, score_quantiles

CARD = "README.md"
PLOTS = {"scores": "card-scores.png", "balance": "card-class-balance.png", "thumbnails": "card-thumbnails.png"}
N_THUMBS = 16  # kept and rejected each

SIZE_CATEGORIES = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                   (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B"),
                   (10 ** 10, "1B<n<10B"), (10 ** 11, "10B<n<100B"), (10 ** 12, "100B<n<1T")]


def size_category(n: int) -> str:
    """Hugging Face ``size_categories`` bucket of ``n`` rows."""
    for bound, name in SIZE_CATEGORIES:
        if n < bound:
            return name
    return "n>1T"


# ------------------------------------------------------------------------------------------------
# Front matter

def front_matter(run: Run, *, name: str) -> dict:
    """Hugging Face dataset-card fields plus a ``kdata`` block with the recipe and its provenance."""
    m = run.manifest
    cfg = m.get("config") or {}
    models = m.get("models") or {}
    counts = m.get("counts") or {}
    kept = int(counts.get("kept") or 0)
    has_text = run.shards is not None and "text" in run.shards.column_names and \
        run.shards.column("text").null_count < run.shards.num_rows
    has_image = run.shards is not None and "image" in run.shards.column_names and \
        run.shards.column("image").null_count < run.shards.num_rows
    task = "image-classification" if has_image else "text-classification" if has_text else "other"
    pool = (m.get("pool") or {}).get("spec") or cfg.get("pool")
    splits = sorted({Path(f["path"]).name.split("-", 1)[0] for f in m.get("files", [])}) or ["train"]
    fm = {
        "pretty_name": f"{name} (kdata-curated distillation set)",
        "license": cfg.get("license") or "unknown",
        "task_categories": [task],
        "size_categories": [size_category(kept)],
        "source_datasets": [str(pool)] if pool else [],
        "annotations_creators": ["machine-generated"],
        "tags": ["knowledge-distillation", "data-curation", "kdata"],
        "configs": [{"config_name": "default",
                     "data_files": [{"split": s, "path": f"data/{s}-*.parquet"} for s in splits]}],
        "kdata": {
            "schema_version": m.get("schema_version"),
            "kdata_version": m.get("kdata_version"),
            "config_hash": m.get("config_hash"),
            "created": _created(m),
            "teacher": {"id": (models.get("teacher") or {}).get("spec", cfg.get("teacher")),
                        "checksum": (models.get("teacher") or {}).get("checksum")},
            "student": {"id": (models.get("student") or {}).get("spec", cfg.get("student")),
                        "checksum": (models.get("student") or {}).get("checksum")},
            "pool": pool,
            "methods": list(m.get("methods") or []),
            "method_info": m.get("method_info") or {},
            "method_options": cfg.get("method_options") or {},
            "critic": {"path": cfg.get("critic"), "recall": cfg.get("critic_recall")},
            "budget": {"spec": cfg.get("budget"), "rows": m.get("budget_rows")},
            "balance": cfg.get("balance"),
            "dedup": {"method": cfg.get("dedup"), "threshold": cfg.get("dedup_threshold"),
                      "frac": cfg.get("dedup_frac")},
            "hard": cfg.get("hard"),
            "seed": m.get("seed", cfg.get("seed")),
            "temperature": m.get("temperature", cfg.get("temperature")),
            "topk": m.get("topk", cfg.get("topk")),
            "counts": {k: counts.get(k) for k in ("n_in", "kept", "rejected", "quarantined")},
            "rejected_by_reason": dict(counts.get("rejected_by_reason") or {}),
            "files": [{"path": f["path"], "rows": f["rows"], "sha256": f["sha256"]} for f in m.get("files", [])],
        },
    }
    return _plain(fm)


def _created(m: dict) -> str | None:
    t = m.get("created_unix")
    return _dt.datetime.fromtimestamp(t, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ") if t else None


def _plain(obj):
    """Plain Python types only, so ``yaml.safe_dump`` and ``safe_load`` round-trip."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def read_front_matter(text: str) -> dict:
    """Parse the YAML front matter of a card (between the leading ``---`` lines)."""
    if not text.startswith("---\n"):
        raise KdataError("card: no YAML front matter")
    end = text.find("\n---\n", 4)
    if end < 0:
        raise KdataError("card: unterminated YAML front matter")
    return yaml.safe_load(text[4:end])


# ------------------------------------------------------------------------------------------------
# Body

def _fmt(x, nd=3) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return str(x)


def _table(header: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(_fmt(v) for v in r) + " |" for r in rows]
    return out


def render_card(run: Run, *, name: str, plots: dict[str, str | None], notes: dict | None = None) -> str:
    """The card's Markdown. ``plots`` maps plot keys to relative links (None: not drawn)."""
    notes = notes or {}
    m = run.manifest
    cfg = m.get("config") or {}
    fm = front_matter(run, name=name)
    k = fm["kdata"]
    dc = decision_counts(run)
    n_in, kept = dc["n_in"] or 0, dc["kept"] or 0
    pool = k["pool"]
    pool_desc = (m.get("pool") or {}).get("description")
    methods = ", ".join(k["methods"]) or "?"
    L: list[str] = ["---", yaml.safe_dump(fm, sort_keys=False, allow_unicode=True).rstrip(), "---", ""]
    L += [f"# {fm['pretty_name']}", ""]
    L += ["## Summary", "",
          f"{kept:,} of {n_in:,} candidate samples from `{pool}` were kept to distil "
          f"`{k['teacher']['id']}` into `{k['student']['id']}`, selected with `{methods}` under a budget of "
          f"`{k['budget']['spec']}` ({_fmt(k['budget']['rows'])} rows). Every row carries the teacher's top-{k['topk']} "
          f"soft labels (temperature {k['temperature']}), the student's prediction and the selection scores. "
          f"{dc['rejected'] or 0:,} samples were rejected (each with a machine-readable reason) and "
          f"{dc['quarantined'] or 0:,} quarantined as unreadable; the decision of every input sample is in "
          f"`decisions.parquet`.", ""]
    L += ["## Sources", "",
          f"- Pool: `{pool}`" + (f" — {pool_desc}" if pool_desc else "") +
          f" ({(m.get('pool') or {}).get('units', '?')} unit(s)).",
          f"- Teacher: `{k['teacher']['id']}` (`{k['teacher']['checksum']}`).",
          f"- Student: `{k['student']['id']}` (`{k['student']['checksum']}`).",
          f"- Licence: `{fm['license']}` — kdata does not know the pool's licence; set `license` in the front "
          f"matter before publishing. Labels and soft labels are machine-generated by the teacher."]
    if run.shards is not None and "source" in run.shards.column_names:
        src = pc.value_counts(run.shards.column("source").combine_chunks()).to_pylist()
        src = sorted(((s["values"], s["counts"]) for s in src), key=lambda x: (-x[1], str(x[0])))
        if src and not (len(src) == 1 and src[0][0] is None):
            L.append("- Kept rows by source: " + ", ".join(f"`{s}` {n}" for s, n in src[:20]) + ".")
    L.append("")
    steps = [f"Score every pool sample with teacher and student (top-{k['topk']} probabilities, KL, "
             f"confidences, margins, entropies).",
             f"Run the method chain `{methods}`: filters drop rows with their own reason, the last ranker "
             f"orders the rest."]
    if k["dedup"]["method"] not in (None, "none"):
        steps.append(f"Remove duplicates (`{k['dedup']['method']}`, threshold {_fmt(k['dedup']['threshold'])}, "
                     f"frac {_fmt(k['dedup']['frac'])}) before the budget; the better-ranked copy survives.")
    L += ["## Curation recipe", ""] + [f"{i}. {s}" for i, s in enumerate(steps, 1)]
    L.append(f"{len(steps) + 1}. Keep the top `{k['budget']['spec']}` "
             f"({_fmt(k['budget']['rows'])} rows)" + (f", balanced by `{k['balance']}`" if k["balance"] else "") +
             f"; ties broken with seed {k['seed']}.")
    if k["hard"]:
        L.append(f"- HARD augmentation: {k['hard']} generated samples requested.")
    if cfg.get("critic"):
        L.append(f"- Critic: `{cfg['critic']}` (recall target {_fmt(cfg.get('critic_recall'))}).")
    L += ["", "Method settings and thresholds (from the run):", "", "```yaml",
          yaml.safe_dump({"method_info": k["method_info"], "method_options": k["method_options"]},
                         sort_keys=True).rstrip(), "```", "",
          f"Configuration hash `{k['config_hash']}`, kdata {k['kdata_version']}, schema {k['schema_version']}, "
          f"created {k['created']}.", ""]
    L += ["## Counts at each stage", ""]
    rows = [["in (pool samples)", n_in], ["quarantined (unreadable)", dc["quarantined"]],
            ["scored", n_in - (dc["quarantined"] or 0)]]
    for r, n in dc["rejected_by_reason_group"].items():
        rows.append([f"rejected: `{r}`", n])
    rows += [["rejected (total)", dc["rejected"]], ["critic-rejected", dc["critic_rejected"]],
             ["generated (HARD)", dc["generated"]], ["generated rejected (critic, teacher flip)",
                                                     dc["generated_rejected"]],
             ["generated kept (in shards)", dc["generated_kept"]], ["**kept**", kept]]
    L += _table(["stage", "samples"], rows) + [""]
    quarantined = quarantined_rows(run, limit=10)
    if quarantined:
        L += [f"Quarantined samples ({dc['quarantined']}; first {len(quarantined)} shown):", ""]
        L += [f"- `{q['sample_id']}`: {q['error']}" for q in quarantined] + [""]
    if dc["by_stage"]:
        L += ["Decisions by the stage that made them: " +
              "; ".join(f"`{s}`: " + ", ".join(f"{d} {n}" for d, n in sorted(v.items()))
                        for s, v in dc["by_stage"].items()) + ".", ""]
    L += ["## Class balance before and after", ""]
    bal = class_balance(run)
    tot = {c: sum(r[c] or 0 for r in bal) for c in ("pool_label", "pool_teacher", "kept_teacher")}

    def share(v, c):
        return None if v is None or not tot[c] else f"{v} ({100 * v / tot[c]:.1f}%)"

    shown, line = balance_highlights(bal)  # above 40 classes: a summary and the classes that moved most
    if line:
        L += [line, ""]
    L += _table(["class", "pool, web label", "pool, teacher prediction", "kept, teacher prediction"],
                [[r["class"], share(r["pool_label"], "pool_label"), share(r["pool_teacher"], "pool_teacher"),
                  share(r["kept_teacher"], "kept_teacher")] for r in shown]) + [""]
    if plots.get("balance"):
        L += [f"![class balance before and after]({plots['balance']})", ""]
    L += ["## Score distributions", "",
          "Quantiles over every scored input sample (from `decisions.parquet`), kept vs rejected:", ""]
    q = score_quantiles(run)
    qrows = []
    for col in score_columns(run) + [c for c in q if c not in score_columns(run)]:
        for d in (KEPT, REJECTED):
            v = q.get(col, {}).get(d)
            if v:
                qrows.append([f"`{col}`", d, v["n"], v["min"], v["p05"], v["p50"], v["p95"], v["max"], v["mean"]])
    L += _table(["score", "decision", "n", "min", "p05", "median", "p95", "max", "mean"], qrows) + [""]
    ag = agreement(run)
    if ag:
        L += _table(["rows", "n", "teacher = student (top-1)", "teacher = web label"],
                    [[r, v["n"], v["teacher_student"], v["teacher_label"]] for r, v in ag.items()]) + [""]
    if plots.get("scores"):
        L += [f"![score histograms, kept vs rejected]({plots['scores']})", ""]
    L += ["## Examples", ""]
    if plots.get("thumbnails"):
        L += [f"![best-ranked kept and most clearly rejected samples]({plots['thumbnails']})", "",
              "Blue: the best-ranked kept samples (rank, teacher class `T`, teacher confidence `p`). Red: the most "
              f"clearly rejected samples (lowest `{primary_score(run) or 'score'}` first), spread over the rejection "
              "reasons (reason, teacher class `T`, score `s`).", ""]
    if notes.get("thumbnails"):
        L += [notes["thumbnails"], ""]
    L += ["## Biases teacher-based selection can introduce", "",
          "- **The teacher's blind spots become the data's blind spots.** Rows are kept by what the teacher "
          "predicts confidently; classes, styles or domains the teacher is weak on are under-kept (compare the "
          "class-balance table), and the student inherits the teacher's mistakes through its soft labels.",
          "- **Labels are the teacher's, not the web's.** `teacher_pred` and the soft labels can disagree with the "
          "original label (`label`); a high teacher/web-label disagreement on kept rows is teacher override, not "
          "ground truth.",
          "- **Easy-example drift.** Confidence-weighted selection (e.g. KD³) prefers prototypical samples; rare but "
          "valid variants (shifted, unusual) are dropped more often than their share of the pool.",
          "- **Student coupling.** Disagreement-based scores depend on this particular student checkpoint; a "
          "different student would select differently.",
          "- **Duplicates and sources.** Over-represented sources or near-duplicates can dominate unless dedup or "
          "balancing was enabled (see the recipe).", ""]
    L += ["## Intended and out-of-scope uses", "",
          f"- Intended: distilling `{k['teacher']['id']}` into `{k['student']['id']}` or similar students with a "
          "KD loss on the stored soft labels; auditing what the curation kept and dropped.",
          "- Out of scope: evaluation or benchmarking (the selection used the teacher and student, so scores on "
          "this set are biased), training models whose labels must be human-verified, and any use the pool's "
          "licence does not allow.", ""]
    split = fm["configs"][0]["data_files"][0]["path"]
    L += ["## How to load", "",
          "From this directory (paths are relative to it):", "",
          "```python", "import pandas as pd", "df = pd.read_parquet(\"data\")", "",
          "import pyarrow.dataset as ds", "table = ds.dataset(\"data\", format=\"parquet\").to_table()", "",
          "from datasets import load_dataset",
          f"train = load_dataset(\"parquet\", data_files=\"{split}\", split=\"train\")",
          "# or, using the `configs` of this card: load_dataset(\".\", split=\"train\")",
          "```", "",
          "Train the student with the kdata trainer:", "", "```bash",
          f"kdata train --shards . --student {k['student']['id']}",
          "kdata inspect .          # counts, reasons, scores, checksum verification", "```", "",
          "Each row: `sample_id`, the payload (`image` bytes or `text`), `label` (original), `teacher_pred`, "
          "`teacher_topk_idx`/`teacher_topk_prob`/`teacher_topk_logit` (soft labels), `student_pred`, "
          "confidences, `kl_ts`, `rank` and `score_<method>`.", ""]
    L += ["## Files", ""]
    L += _table(["file", "rows", "sha256"], [[f"`{f['path']}`", f["rows"], f"`{f['sha256'][:16]}…`"]
                                             for f in m.get("files", [])])
    L += ["", "`decisions.parquet` holds one row per input sample; `manifest.json` the checksums, config and "
          "counts. Regenerate this card with `kdata card DIR`.", ""]
    return "\n".join(L)


# ------------------------------------------------------------------------------------------------
# Plots

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
        ax.set_xticklabels([r["class"] for r in bal], fontsize=7, rotation=90 if len(bal) > 20 else 0)
    ax.set_ylabel("share of rows")
    ax.set_title("class balance before and after curation", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path)
    return True


def _decode(data: bytes | None):
    if data is None:
        return None
    from PIL import Image

    try:
        im = Image.open(io.BytesIO(data))
        im.load()
        return np.asarray(im.convert("RGB"))
    except Exception:  # an unreadable payload is shown as a blank tile
        return None


def fetch_payloads(run: Run, ids: list[str], *, pool=None) -> tuple[dict[str, bytes], str | None]:
    """Image bytes for ``ids``: from the shards, then from the run's pool. Returns (found, note)."""
    found: dict[str, bytes] = {}
    if not ids:
        return found, None
    want = pa.array(ids, pa.string())
    if run.shards is not None and "image" in run.shards.column_names:
        t = run.shards.filter(pc.is_in(run.shards.column("sample_id"), value_set=want)).select(["sample_id", "image"])
        found.update({r["sample_id"]: r["image"] for r in t.to_pylist() if r["image"] is not None})
    missing = [i for i in ids if i not in found]
    if not missing:
        return found, None
    spec = (run.manifest.get("config") or {}).get("pool")
    if pool is None:
        if not spec:
            return found, "Rejected samples are not pictured: the run recorded no pool to read their payload from."
        try:
            from kdata.pools.spec import open_pool

            pool = open_pool(spec)
        except Exception as exc:  # pool moved or deleted: the card says so instead of failing
            return found, (f"Rejected samples are not pictured: the pool `{spec}` is not reachable "
                           f"({type(exc).__name__}: {str(exc)[:120]}).")
    want = pa.array(missing, pa.string())
    try:
        for unit in pool.units:
            t = unit.read()
            if "image" not in t.column_names:
                continue
            t = t.filter(pc.is_in(t.column("sample_id"), value_set=want)).select(["sample_id", "image"])
            found.update({r["sample_id"]: r["image"] for r in t.to_pylist() if r["image"] is not None})
            if all(i in found for i in missing):
                break
    except Exception as exc:
        return found, f"Some rejected samples are not pictured: reading the pool `{spec}` failed ({type(exc).__name__})."
    lost = [i for i in missing if i not in found]
    note = f"{len(lost)} rejected sample(s) are not pictured: no image payload in the pool `{spec}`." if lost else None
    return found, note


def thumbnail_grid(run: Run, path: Path, *, n: int = N_THUMBS, pool=None) -> tuple[bool, str | None]:
    """Grid of the ``n`` best-ranked kept and ``n`` most clearly rejected images with their reasons.

    Drawn with PIL (one image, no per-tile plotting axes: ~50 ms instead of seconds). Returns
    (written, note); nothing is written for datasets without image payloads.
    """
    kept_rows: list[dict] = []
    if run.shards is not None and "image" in run.shards.column_names:
        t = run.shards
        if "rank" in t.column_names:
            t = t.sort_by("rank")
        cols = [c for c in ("sample_id", "rank", "teacher_pred", "teacher_conf") if c in t.column_names]
        kept_rows = t.select(cols).slice(0, n).to_pylist()
    rej_rows: list[dict] = []
    if run.decisions is not None:
        picks = pick_rejected(run, n)
        col = primary_score(run)
        cols = ["sample_id", "reason", "teacher_pred"] + ([col] if col else [])
        rej_rows = run.decisions.select(cols).take(pa.array(picks, pa.int64())).to_pylist() if picks else []
        for r in rej_rows:
            r["score"] = r.get(col) if col else None
    images, note = fetch_payloads(run, [r["sample_id"] for r in kept_rows + rej_rows], pool=pool)
    decoded = {i: _decode(b) for i, b in images.items()}
    if not any(decoded.get(r["sample_id"]) is not None for r in kept_rows + rej_rows):
        return False, "No thumbnails: the curated rows carry no image payload."
    from PIL import Image, ImageDraw, ImageFont

    ncol, tile, cap, pad, head = 8, 96, 30, 6, 26
    cell_w, cell_h = tile + pad, tile + cap + pad
    blocks = [("best-ranked kept", kept_rows, (31, 119, 180)), ("most clearly rejected, by reason", rej_rows,
                                                                 (214, 39, 40))]
    heights = [head + max(1, -(-len(rows) // ncol)) * cell_h for _, rows, _ in blocks]
    canvas = Image.new("RGB", (pad + ncol * cell_w, sum(heights) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    font, small = ImageFont.load_default(size=13), ImageFont.load_default(size=10)
    y0 = pad
    for (title, rows, color), h in zip(blocks, heights):
        draw.text((pad, y0 + 4), f"{title} ({len(rows)})" if rows else f"{title}: none", fill=color, font=font)
        for i, row in enumerate(rows):
            x = pad + (i % ncol) * cell_w
            y = y0 + head + (i // ncol) * cell_h
            img = decoded.get(row["sample_id"])
            if img is not None:
                thumb = Image.fromarray(img).resize((tile, tile), Image.NEAREST)
                canvas.paste(thumb, (x, y))
            else:
                draw.text((x + 8, y + tile // 2 - 6), "not available", fill=(90, 90, 90), font=small)
            draw.rectangle((x - 1, y - 1, x + tile, y + tile), outline=color, width=2)
            cls = run.class_name(row.get("teacher_pred"))
            if "rank" in row or "reason" not in row:
                lines = (f"kept #{row.get('rank', i)}", f"T={cls} p={_fmt(row.get('teacher_conf'), 2)}")
            else:
                reason = str(row.get("reason") or "?")
                lines = (reason if len(reason) <= 18 else reason[:17] + "…", f"T={cls} s={_fmt(row.get('score'), 2)}")
            for k, line in enumerate(lines):
                draw.text((x, y + tile + 3 + 12 * k), line, fill=color, font=small)
        y0 += h
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    canvas.save(tmp, format="PNG")
    os.replace(tmp, path)
    return True, note


# ------------------------------------------------------------------------------------------------
# Writing, regenerating, publishing

def write_card(out: str | Path, *, manifest: dict | None = None, name: str | None = None, pool=None,
               dest: str | Path | None = None, prefix: str = "") -> list[dict]:
    """Write the card and its plots for the dataset in ``out`` into ``dest`` (default: ``out``).

    ``name`` is the dataset name (default: the directory's name); ``manifest`` and ``pool`` can be
    passed by the pipeline, which writes the card inside its staging directory before the manifest.
    ``prefix`` prefixes the plot file names (used when several cards share one directory). Returns
    the written files as manifest entries (path relative to ``dest``, bytes, sha256), card first.
    """
    out = Path(out)
    dest = Path(dest) if dest is not None else out
    dest.mkdir(parents=True, exist_ok=True)
    name = name or out.resolve().name
    run = load_run(out, manifest=manifest)
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
    fname = prefix + PLOTS["thumbnails"]
    ok, note = thumbnail_grid(run, dest / fname, pool=pool)
    links["thumbnails"] = fname if ok else None
    if ok:
        written.append(fname)
    if note:
        notes["thumbnails"] = note
    text = render_card(run, name=name, plots=links, notes=notes)
    card_name = f"{prefix}{CARD}" if not prefix else f"{prefix.rstrip('-_')}.md"
    from kdata.core.atomic import write_bytes

    write_bytes(dest / card_name, text.encode("utf-8"))
    return [{"path": p, "bytes": (dest / p).stat().st_size, "sha256": sha256_file(dest / p)}
            for p in [card_name] + written]


def card_entry(files: list[dict]) -> dict:
    """The manifest's ``card`` key: the card and its plots with checksums (not part of ``files``)."""
    return {"path": files[0]["path"], "files": files}


def publish(out: str | Path, card_dir: str | Path, *, name: str | None = None) -> Path:
    """Copy the card of ``out`` to ``card_dir/<name>.md`` with its plots as ``<name>-card-*.png``."""
    out = Path(out)
    name = name or out.resolve().name
    files = write_card(out, dest=card_dir, name=name, prefix=f"{name}-")
    return Path(card_dir) / files[0]["path"]


def regenerate(out: str | Path, *, card_dir: str | Path | None = None) -> dict:
    """``kdata card DIR``: rewrite the card beside the shards, record it in the manifest, optionally publish."""
    from kdata.core.atomic import write_json
    from kdata.dataset.writer import MANIFEST, read_manifest, verify

    out = Path(out)
    manifest = read_manifest(out) if out.is_dir() else None
    if manifest is None:
        raise KdataError(f"{out}: not a kdata dataset (no manifest.json)")
    problems = verify(out)
    if problems:
        raise KdataError(f"{out}: integrity check failed, not writing a card: {problems[0]}", exit_code=1)
    base = {k: v for k, v in manifest.items() if k != "card"}
    files = write_card(out, manifest=base)
    stale = {f["path"] for f in (manifest.get("card") or {}).get("files", [])} - {f["path"] for f in files}
    for p in stale:  # a plot that is no longer drawn
        (out / p).unlink(missing_ok=True)
    if manifest.get("card") != card_entry(files):
        write_json(out / MANIFEST, {**manifest, "card": card_entry(files)})
    result = {"card": str(out / files[0]["path"]), "files": [f["path"] for f in files]}
    if card_dir is not None:
        result["published"] = str(publish(out, card_dir))
    return result

