"""The data card's summary and recipe for a dataset made from a curated one (``kdata dedup``,
``kdata augment``): what the source was, what this step did to its rows, never a budget it did not have.

Read back from the manifest (``source`` carries the source's path, config hash and counts), so
``kdata card DIR`` rewrites the same text. Only the source directory's name is printed, not its path.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from kdata.report.card_biases import dedup_summary, dedup_text
from kdata.report.markdown import fmt, md_code

__all__ = ["derived_kind", "derived_recipe", "derived_summary", "settings_lines"]


def derived_kind(m: dict) -> str | None:
    """``dedup`` or ``augment`` for a dataset derived from a curated one, None for a selection."""
    cfg = m.get("config") or {}
    if cfg.get("command") == "dedup":
        return "dedup"
    return "augment" if cfg.get("op") == "augment" else None


def _source(m: dict, k: dict) -> tuple[str, str]:
    """(the source directory's name, one phrase on how it was selected)."""
    src = m.get("source") or {}
    name = Path(str(src.get("path") or "?")).name
    counts = src.get("counts") or {}
    methods = ", ".join(k.get("methods") or []) or "?"
    how = f"selected with {md_code(methods)} from {md_code(k.get('pool'))}"
    if counts.get("n_in") is not None:
        how += f" ({fmt(counts.get('kept'))} of {fmt(counts.get('n_in'))} pool samples kept)"
    return name, how


def derived_summary(c, kind: str, *, carries: str) -> list[str]:
    """The Summary section of a derived dataset (``c``: the card's ``CardContext``)."""
    k, dc, m = c.k, c.dc, c.m
    name, how = _source(m, k)
    n_in, kept, rejected = dc["n_in"] or 0, dc["kept"] or 0, dc["rejected"] or 0
    models = f"to distil {md_code(k['teacher']['id'])} into {md_code(k['student']['id'])}"
    if kind == "dedup":
        level = dedup_summary(m, c.cfg)["requested"]
        text = (f"{kept:,} of the {n_in:,} rows of the curated dataset {md_code(name)} were kept after "
                f"{md_code(level)} dedup, {models}; {rejected:,} were rejected as duplicates of a kept row "
                f"(`duplicate_of:<id>`).")
    else:
        counts = m.get("counts") or {}
        text = (f"This dataset holds the {kept:,} rows of the curated dataset {md_code(name)} and "
                f"{counts.get('generated_kept', 0):,} HARD augmentations of them ({counts.get('generated', 0):,} "
                f"generated, {counts.get('generated_rejected', 0):,} rejected by the critic), {models}.")
    return ["## Summary", "",
            f"{text} The source was {how}. Every row carries the teacher's {carries}. The decision of every "
            "row of the source is in `decisions.parquet`.", ""]


def derived_recipe(c, kind: str) -> list[str]:
    """The Curation recipe section of a derived dataset."""
    m, k, cfg = c.m, c.k, c.cfg
    name, how = _source(m, k)
    src_hash = (m.get("source") or {}).get("config_hash")
    steps = [f"Start from the curated dataset {md_code(name)}"
             + (f" (configuration hash {md_code(src_hash)})" if src_hash else "")
             + f", {how}; its own card describes that selection."]
    if kind == "dedup":
        d = dedup_summary(m, cfg)
        used = ", ".join([md_code(d["method"] or d["requested"])] +
                         [f"{n} {fmt(d[n])}" for n in ("threshold", "frac") if d[n] is not None])
        what = dedup_text(d)
        steps.append(f"Remove duplicates ({used}); of each group the better-ranked copy survives, the others are "
                     "rejected `duplicate_of:<id>`." + (f" In this run {what}." if what else ""))
    else:
        hard = m.get("hard") or {}
        steps.append(f"Generate HARD augmentations of every row ({md_code(hard.get('mode', '?'))} search) and keep "
                     f"those the critic {md_code(hard.get('critic', '?'))} accepts (threshold "
                     f"{fmt(hard.get('critic_threshold'))}); the source rows are all kept.")
    L = ["## Curation recipe", ""] + [f"{i}. {s}" for i, s in enumerate(steps, 1)]
    if k.get("hard"):
        L.append(f"- HARD augmentation: {k['hard']} generated samples requested per original row.")
    return L + settings_lines(c)


def settings_lines(c) -> list[str]:
    """The method settings (YAML) and the configuration line that close the recipe section."""
    k = c.k
    return ["", "Method settings and thresholds (from the run):", "", "```yaml",
            yaml.safe_dump({"method_info": k["method_info"], "method_options": k["method_options"]},
                           sort_keys=True).rstrip(), "```", "",
            f"Configuration hash {md_code(k['config_hash'])}, kdata {k['kdata_version']}, schema "
            f"{k['schema_version']}, created {k['created']}.", ""]
