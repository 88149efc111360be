"""The data card's text: Hugging Face front matter and the Markdown body, one function per section.

The front matter is ``huggingface_hub``'s ``DatasetCardData`` (written and parsed by ``DatasetCard``),
with ``configs`` and ``dataset_info.features`` so that ``datasets.load_dataset(DIR)`` finds the
shards and decodes ``image`` to a ``PIL.Image`` (``kdata.report.hf``). Everything is read back
from what the run wrote (``kdata.report.inspect.Run``), so the same run always renders the same
bytes. The card holds no absolute paths and no wall-clock time except the manifest's creation time.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from kdata.core.errors import KdataError
from kdata.core.jsonable import jsonable
from kdata.dataset.schema import KEPT, REJECTED
from kdata.report.card_biases import SAMPLER, bias_lines, dedup_summary, dedup_text, hard_count, keep_step
from kdata.report.card_derived import derived_kind, derived_recipe, derived_summary, settings_lines
from kdata.report.card_generate import critic_name, generate_lines, generated_recipe, generated_summary
from kdata.report.card_usage import files, how_to_load, uses
from kdata.report.hf import hf_features
from kdata.report.inspect import (Run, agreement, balance_highlights, best_first, class_balance, decision_counts,
                                  generated_rows, pick_rejected, primary_score, quarantined_rows, score_columns, score_quantiles)
from kdata.report.markdown import Md, fmt, md_code, md_table, md_text, printable
from kdata.report.text_run import text_card_lines, text_summary

__all__ = ["SECTIONS", "SIZE_CATEGORIES", "CardContext", "card_data", "fmt", "front_matter", "hard_count", "md_table",
           "read_front_matter", "render_card", "size_category"]

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

def _task(run: Run) -> str:
    has = run.has_values  # a payload column: from the shards' statistics
    if has("teacher_topk_ids") or has("gen_token_ids"):  # causal-LM text: soft labels or generated tokens
        return "text-generation"
    if has("image") or has("text"):
        return "image-classification" if has("image") else "text-classification"
    # no payload kept (e.g. every row quarantined): the pool's kind, from what scored it
    if (run.manifest.get("scoring") or {}).get("kind") == "causal_lm":
        return "text-generation"
    teacher = (run.manifest.get("models") or {}).get("teacher") or {}
    return "image-classification" if "image" in run.shard_columns and teacher.get("input_size") else "other"


def _token_labels(c) -> bool:
    """Whether the curated rows are causal-LM text with per-token soft labels (docs/text.md)."""
    return c.run.shards is not None and "teacher_topk_ids" in c.run.shards.column_names


def _provenance(m: dict, cfg: dict, pool) -> dict:
    """The front matter's ``kdata`` block: the recipe, its models and settings, counts and files."""
    models = m.get("models") or {}
    counts = m.get("counts") or {}
    dedup = dedup_summary(m, cfg)
    return {
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
        "balance": m.get("balance", cfg.get("balance")),
        "dedup": {key: dedup[key] for key in ("method", "threshold", "frac")},  # what ran, not what was asked
        "hard": hard_count(m),
        "seed": m.get("seed", cfg.get("seed")),
        "temperature": m.get("temperature", cfg.get("temperature")),
        "topk": _topk(m, cfg),
        "counts": {k: counts.get(k) for k in ("n_in", "kept", "rejected", "quarantined")},
        "rejected_by_reason": dict(counts.get("rejected_by_reason") or {}),
        "files": [{"path": f["path"], "rows": f["rows"], "sha256": f["sha256"]} for f in m.get("files", [])],
    }


def _topk(m: dict, cfg: dict):
    """The soft labels' k: per token for causal-LM text (``scoring.token_topk``), else per row."""
    sc = m.get("scoring") or {}
    if sc.get("kind") == "causal_lm" and sc.get("token_topk") is not None:
        return sc["token_topk"]
    return m.get("topk", cfg.get("topk"))


def card_data(run: Run, *, name: str):
    """``huggingface_hub.DatasetCardData``: the dataset-card fields, ``configs``, ``dataset_info.features``
    and a ``kdata`` block with the recipe and its provenance."""
    from huggingface_hub import DatasetCardData

    m = run.manifest
    cfg = m.get("config") or {}
    kept = int((m.get("counts") or {}).get("kept") or 0)
    pool = (m.get("pool") or {}).get("spec") or cfg.get("pool") or (
        f"predictions {cfg['scores']}" if cfg.get("scores") else None)  # --scores without --pool
    splits = sorted({Path(f["path"]).name.split("-", 1)[0] for f in m.get("files", [])}) or ["train"]
    task = _task(run)
    features = hf_features(run.shard_schema, image_columns=("image",) if task == "image-classification" else (),
                           class_names=m.get("class_names")) if run.shards is not None else None
    fields = jsonable({  # plain values only, so the YAML is safe_load-able and round-trips
        "pretty_name": f"{name} (kdata-curated distillation set)",
        "license": m.get("license") or cfg.get("license") or "unknown",
        "task_categories": [task],
        "size_categories": [size_category(kept)],
        "source_datasets": [str(pool)] if pool else [],
        "annotations_creators": ["machine-generated"],
        "tags": ["knowledge-distillation", "data-curation", "kdata"],
        "configs": [{"config_name": "default",
                     "data_files": [{"split": s, "path": f"data/{s}-*.parquet"} for s in splits]}],
        **({"dataset_info": {"features": features}} if features else {}),
        "kdata": _provenance(m, cfg, pool),
    })
    return DatasetCardData(**fields)


def front_matter(run: Run, *, name: str) -> dict:
    """The card's front matter as a plain dict, exactly as written (``card_data(...).to_dict()``)."""
    return card_data(run, name=name).to_dict()


def _created(m: dict) -> str | None:
    t = m.get("created_unix")
    return _dt.datetime.fromtimestamp(t, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ") if t else None


def read_front_matter(text: str) -> dict:
    """The front matter of a card, parsed by ``huggingface_hub.DatasetCard``."""
    from huggingface_hub import DatasetCard

    if not text.startswith("---\n"):
        raise KdataError("card: no YAML front matter")
    if text.find("\n---\n", 4) < 0:
        raise KdataError("card: unterminated YAML front matter")
    return DatasetCard(text).data.to_dict()


# ------------------------------------------------------------------------------------------------
# Body

@dataclass
class CardContext:
    """What every section reads: the run, its front matter (``DatasetCardData`` and as a dict), decision
    counts, plot links and notes."""

    run: Run
    card: object  # huggingface_hub.DatasetCardData
    fm: dict
    dc: dict
    plots: dict = field(default_factory=dict)
    notes: dict = field(default_factory=dict)

    @property
    def m(self) -> dict:
        return self.run.manifest

    @property
    def cfg(self) -> dict:
        return self.m.get("config") or {}

    @property
    def k(self) -> dict:
        return self.fm["kdata"]

    @property
    def methods(self) -> str:
        return ", ".join(self.k["methods"]) or "?"


def _header(c: CardContext) -> list[str]:
    return ["---", c.card.to_yaml(), "---", "", f"# {md_text(c.fm['pretty_name'])}", ""]


def _summary(c: CardContext) -> list[str]:
    if c.m.get("generate"):  # kdata generate: no budget, no soft labels yet
        return generated_summary(c.m, pool=c.k["pool"]) + generate_lines(c.m)
    k, dc = c.k, c.dc
    n_in, kept = dc["n_in"] or 0, dc["kept"] or 0
    carries = (f"top-{k['topk']} soft labels (temperature {k['temperature']}), the student's prediction and the "
               "selection scores")
    if _token_labels(c):
        carries = (f"per-token top-{(c.m.get('scoring') or {}).get('token_topk', '?')} log-probabilities with the "
                   "leftover mass, the teacher/student (and reference) NLL and the selection scores")
    if kind := derived_kind(c.m):  # kdata dedup / augment: the source's selection, no budget of its own
        return derived_summary(c, kind, carries=carries)
    return ["## Summary", "",
            f"{kept:,} of {n_in:,} candidate samples from {md_code(k['pool'])} were kept to distil "
            f"{md_code(k['teacher']['id'])} into {md_code(k['student']['id'])}, selected with {md_code(c.methods)} "
            f"under a budget of {md_code(k['budget']['spec'])} ({fmt(k['budget']['rows'])} rows). Every row carries "
            f"the teacher's {carries}. {dc['rejected'] or 0:,} samples were rejected (each with a machine-readable "
            f"reason) and {dc['quarantined'] or 0:,} quarantined as unreadable; the decision of every input "
            f"sample is in `decisions.parquet`.", ""]


def _sources(c: CardContext) -> list[str]:
    k, pool_info = c.k, c.m.get("pool") or {}
    pool_desc = pool_info.get("description")
    L = ["## Sources", "",
         f"- Pool: {md_code(k['pool'])}" + (f" — {md_text(pool_desc)}" if pool_desc else "") +
         f" ({md_text(pool_info.get('units', '?'))} unit(s)).",
         f"- Teacher: {md_code(k['teacher']['id'])} ({md_code(k['teacher']['checksum'])}).",
         *([f"- Student: {md_code(k['student']['id'])} ({md_code(k['student']['checksum'])})."] if k["student"]["id"] else []),
         f"- Licence: {md_code(c.fm['license'])} — kdata does not know the pool's licence: `kdata card DIR --license ID` "
         f"(or `license` in the front matter) sets it. Labels and soft labels are machine-generated by the teacher."]
    shards = c.run.shards
    if shards is not None and "source" in shards.column_names:
        gen = generated_rows(c.run)  # HARD rows: counted apart, not as kept pool rows
        L += _by_source("Kept rows by source", shards.filter(pa.array(~gen)))
        if gen.any():
            L += _by_source("Rows generated by HARD, by their parent's source", shards.filter(pa.array(gen)))
    return L + [""]


def _by_source(title: str, rows) -> list[str]:
    """One line: the rows' counts by ``source``, largest first (none: no line)."""
    src = pc.value_counts(rows.column("source").combine_chunks()).to_pylist()
    src = sorted(((s["values"], s["counts"]) for s in src), key=lambda x: (-x[1], str(x[0])))
    if not src or (len(src) == 1 and src[0][0] is None):
        return []
    return [f"- {title}: " + ", ".join(f"{md_code(s)} {n}" for s, n in src[:20]) + "."]


def _scoring_step(c: CardContext) -> str:
    """Step 1 of the recipe: what scoring stored (causal LMs: per-token soft labels and sequence NLLs)."""
    sc = c.m.get("scoring") or {}
    scores = (c.m.get("config") or {}).get("scores")
    if scores:  # bring-your-own predictions: nothing was scored here
        return (f"Read the teacher's and student's predictions for every sample from {md_code(scores)} (their "
                f"top-{c.k['topk']} probabilities, KL, confidences, margins, entropies derived from them).")
    if sc.get("kind") != "causal_lm":
        return (f"Score every pool sample with teacher and student (top-{c.k['topk']} probabilities, KL, "
                "confidences, margins, entropies).")
    ref = "reference" in (c.m.get("models") or {})
    kl = "the mean token KL(teacher ‖ student)" if sc.get("tokenizer_shared", True) else \
        "no token KL (the student tokenises differently; its NLL is compared per byte)"
    return (f"Score every pool text with the teacher, student{' and reference' if ref else ''} causal LMs: the "
            f"teacher's per-token top-{sc.get('token_topk', '?')} log-probabilities with the leftover mass, each "
            f"model's sequence NLL (mean and summed over the tokens), the teacher's token entropy and {kl}.")


def _recipe(c: CardContext) -> list[str]:
    if c.m.get("generate"):
        return generated_recipe(c.m)
    if kind := derived_kind(c.m):
        return derived_recipe(c, kind)
    k, cfg = c.k, c.cfg
    steps = [_scoring_step(c), f"Run the method chain {md_code(c.methods)}: filters drop rows with their own reason, "
             + ("then the sampler takes the budget (below)." if SAMPLER in k["methods"] else
                "the last ranker orders the rest.")]
    dedup = dedup_summary(c.m, cfg)
    if dedup["method"] is not None:
        used = ", ".join([md_code(k["dedup"]["method"])] + [f"{name} {fmt(k['dedup'][name])}"
                                                           for name in ("threshold", "frac")
                                                           if k["dedup"][name] is not None])
        what = dedup_text(dedup)
        steps.append(f"Remove duplicates ({used}) before the budget; the better-ranked copy survives (the default "
                     "recipe: a random one)." + (f" In this run {what}." if what else ""))
    elif dedup["skipped"]:
        steps.append(f"Duplicates were not removed: {dedup_text(dedup)}.")
    L = ["## Curation recipe", ""] + [f"{i}. {s}" for i, s in enumerate(steps, 1)]
    L.append(f"{len(steps) + 1}. {keep_step(k)}")
    if k["hard"]:
        L.append(f"- HARD augmentation: {k['hard']} generated samples requested per original row.")
    if cfg.get("critic"):
        L.append(f"- Critic: {md_code(critic_name(cfg['critic']))} (recall target {fmt(cfg.get('critic_recall'))}).")
    return L + settings_lines(c)


def _counts(c: CardContext) -> list[str]:
    dc = c.dc
    n_in = dc["n_in"] or 0
    rows = [["in (pool samples)", n_in], ["quarantined (unreadable)", dc["quarantined"]],
            ["scored", n_in - (dc["quarantined"] or 0)]]
    for r, n in dc["rejected_by_reason_group"].items():
        rows.append([Md(f"rejected: {md_code(r)}"), n])
    rows += [["rejected (total)", dc["rejected"]], ["critic-rejected", dc["critic_rejected"]],
             ["generated (HARD)", dc["generated"]],
             ["generated rejected (critic, teacher flip)", dc["generated_rejected"]],
             ["generated kept (in shards)", dc["generated_kept"]], [Md("**kept**"), dc["kept"] or 0]]
    L = ["## Counts at each stage", ""] + md_table(["stage", "samples"], rows) + [""]
    quarantined = quarantined_rows(c.run, limit=10)
    if quarantined:
        L += [f"Quarantined samples ({dc['quarantined']}; {len(quarantined)} shown, spread over the kinds of error; "
              "`kdata inspect` lists more):", ""]
        L += [f"- {md_code(q['sample_id'])}: {md_text(q['error'])}" for q in quarantined] + [""]
    if dc["by_stage"]:
        L += ["Decisions by the stage that made them: " +
              "; ".join(f"{md_code(s)}: " + ", ".join(f"{md_text(d)} {n}" for d, n in sorted(v.items()))
                        for s, v in dc["by_stage"].items()) + ".", ""]
    return L


def _class_balance(c: CardContext) -> list[str]:
    # text runs: texts, domain mixture, perplexity (kdata.report.text_run); [] for image runs
    text = text_card_lines(text_summary(c.run, pick=lambda n: pick_rejected(c.run, n),
                                        order=lambda rows: best_first(c.run, rows)))
    if _token_labels(c):  # causal LMs predict tokens, not classes
        return text
    L = text + ["## Class balance before and after", ""]
    bal = class_balance(c.run)
    cols = ["pool_label", "pool_teacher", "kept_teacher"]
    heads = ["class", "pool, web label", "pool, teacher prediction", "kept, teacher prediction"]
    if any(r["generated_teacher"] is not None for r in bal):  # HARD rows: apart from the kept samples
        cols, heads = cols + ["generated_teacher"], heads + ["generated (HARD), teacher prediction"]
    tot = {col: sum(r[col] or 0 for r in bal) for col in cols}

    def share(v, col):
        return None if v is None or not tot[col] else f"{v} ({100 * v / tot[col]:.1f}%)"

    shown, line = balance_highlights(bal)  # above 40 classes: a summary and the classes that moved most
    if line:
        L += [line, ""]
    L += md_table(heads, [[r["class"]] + [share(r[col], col) for col in cols] for r in shown]) + [""]
    if c.plots.get("balance"):
        L += [f"![class balance before and after]({c.plots['balance']})", ""]
    return L


def _scores(c: CardContext) -> list[str]:
    L = ["## Score distributions", "",
         "Quantiles over every scored input sample (from `decisions.parquet`), kept vs rejected; statistics only "
         "the shards hold are over the kept samples, and rows generated by HARD are shown apart (`generated`):", ""]
    q = score_quantiles(c.run)
    qrows = []
    for col in score_columns(c.run) + [col for col in q if col not in score_columns(c.run)]:
        for d in (KEPT, REJECTED, "generated"):
            v = q.get(col, {}).get(d)
            if v:
                qrows.append([md_code(col), d, v["n"], v["min"], v["p05"], v["p50"], v["p95"], v["max"], v["mean"]])
    L += md_table(["score", "decision", "n", "min", "p05", "median", "p95", "max", "mean"], qrows) + [""]
    ag = agreement(c.run)
    if ag:
        L += md_table(["rows", "n", "teacher = student (top-1)", "teacher = web label"],
                      [[r, v["n"], v["teacher_student"], v["teacher_label"]] for r, v in ag.items()]) + [""]
    if c.plots.get("scores"):
        L += [f"![score histograms, kept vs rejected]({c.plots['scores']})", ""]
    return L


def _examples(c: CardContext) -> list[str]:
    L = ["## Examples", ""]
    if c.plots.get("thumbnails"):
        L += [f"![best-ranked kept, random kept per class and most clearly rejected samples]({c.plots['thumbnails']})",
              "", "Blue: the best-ranked kept samples (rank, teacher class `T`, teacher confidence `p`). Green: a "
              "random sample of the kept rows of each teacher-predicted class — what a typical kept row looks like. "
              f"Red: the most clearly rejected samples (lowest {md_code(primary_score(c.run) or 'score')} first), spread "
              "over the rejection reasons (reason, teacher class `T`, score `s`).", ""]
    texts = c.run.payload("text", range(min(5, c.run.shards.num_rows))) if c.run.shards is not None and \
        "text" in c.run.shard_columns else []
    if any(texts):  # text rows: snippets of the best-ranked kept rows instead of thumbnails
        L += ["Best-ranked kept texts (first 120 characters):", ""]
        L += ["- " + md_code(" ".join(t.split())[:120]) for t in texts if t] + [""]
    elif not c.dc["kept"] and not (c.run.shards is not None and c.run.shards.num_rows):
        L += ["No examples: no row was kept (the counts above and `decisions.parquet` say why each row went).", ""]
    elif c.notes.get("thumbnails"):
        L += [c.notes["thumbnails"], ""]
    if c.plots.get("report"):
        L += [f"Browse kept and rejected samples by reason, class and score in [`{c.plots['report']}`]"
              f"({c.plots['report']}): a static page with every count and a sample of every decision, "
              "which opens in a browser without a server or network.", ""]
    return L


def _biases(c: CardContext) -> list[str]:
    return bias_lines(c.k, c.cfg, c.m)


SECTIONS = (_header, _summary, _sources, _recipe, _counts, _class_balance, _scores, _examples, _biases, uses,
            how_to_load, files)


def render_card(run: Run, *, name: str, plots: dict[str, str | None], notes: dict | None = None) -> str:
    """The card's Markdown. ``plots`` maps plot keys to relative links (None: not drawn)."""
    card = card_data(run, name=name)
    c = CardContext(run=run, card=card, fm=card.to_dict(), dc=decision_counts(run), plots=plots, notes=notes or {})
    return "\n".join(line for section in SECTIONS for line in section(c))
