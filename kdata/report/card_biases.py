"""The card's "biases" section: what *this* run's selection can skew, method by method.

Each method keeps a different kind of row (KD³ the confident, prototypical ones; RAD the ones the
student finds confusing; a critic what its labellers accepted…), so one generic text is wrong for
most runs. The section names the methods that ran (from the manifest) and adds the notes that
depend on the rest of the recipe: balancing, deduplication, HARD generation, the student.
"""

from __future__ import annotations

from kdata.report.markdown import fmt, md_code, md_text

__all__ = ["DEDUP_LEVELS", "METHOD_BIASES", "bias_lines", "dedup_summary", "dedup_text", "hard_count"]

# method → what it over- and under-keeps (the algorithm is in kdata.selection.methods.<name>)
METHOD_BIASES = {
    "kd3": "**KD³ prefers prototypical rows.** It keeps rows whose combined teacher+student prediction is "
           "confident, so rare but valid variants (shifted, unusual, hard) are dropped more often than their share "
           "of the pool, and classes both models find easy are over-kept. A row both models are confidently wrong "
           "about scores high and is kept with the teacher's wrong soft label.",
    "rad": "**RAD keeps what the student finds confusing and the teacher is sure of.** Rows are drawn with a "
           "probability that grows with the student's uncertainty (1 − margin) times the teacher's confidence, "
           "capped so that the budget is spread out; rows the student already knows are under-kept, and so are "
           "hard rows the teacher is unsure of, valid ones included. A row the teacher is confidently wrong about "
           "is still drawn, with the teacher's wrong soft label{rad_error}.",
    "coverage": "**The default recipe keeps the pool's own mix, minus a tail.** The rows whose label the teacher "
                "believes least are cut first (mislabelled, junk, off-domain, but also valid rows the teacher gets "
                "wrong, so its blind spots are under-kept); rows without a label are cut when the teacher is least "
                "confident, most at odds with the student or far from its class centroid (rare valid variants "
                "too). Then every teacher-predicted class x difficulty stratum gets a row and the rest follows the "
                "strata's sizes, easier strata favoured for small budgets and harder ones for large budgets; class "
                "shares follow the teacher's predictions.{coverage_cut}",
    "critic": "**The critic keeps what its labellers accepted.** A classifier fitted on a small human-labelled "
              "accept/reject set decides; styles and sources like its accepted examples pass, valid rows unlike "
              "them are rejected, and at the chosen recall target{critic_recall} a share of acceptable rows is "
              "dropped by design.",
    "miniplm": "**MiniPLM keeps what the teacher finds likely and the reference does not.** The score "
               "log p_teacher − log p_reference depends on the reference model chosen: rows that are easy for both "
               "(common, clean) and rows that are hard for the teacher are under-kept.",
    "ddk": "**DDK moves the budget between domains.** Domains where the student lags the teacher most get more "
           "rows; the `domain` column decides what a domain is, and a small domain with a large gap can be "
           "over-sampled relative to its size.",
    "random": "**Random selection adds no bias of its own.** A seeded uniform sample: every bias of the pool "
              "(sources, classes, duplicates, label noise) carries over in proportion.",
    "teacher_confidence": "**Teacher confidence keeps the teacher's easy rows.** Prototypical rows of the classes "
                          "the teacher is sure about are over-kept; rows it is confidently wrong about are kept "
                          "with its wrong labels.",
    "student_entropy": "**Uncertainty sampling keeps the student's hardest rows.** Highest student entropy first: "
                       "ambiguous, noisy and off-domain inputs dominate, including rows no label fits.",
    "disagreement": "**Disagreement keeps the rows teacher and student differ on most.** Highest KL(teacher ‖ "
                    "student) first: the student's real gaps, but also teacher mistakes and junk the teacher is "
                    "confidently wrong about.",
}
# methods whose choice depends on the student's predictions
RAD_ERROR_FROM = {"teacher_confidence": "the teacher's confidence", "student_confidence": "the student's confidence",
                  "given": "the value given as teacher_error",
                  "fixed_for_sequences": "a fixed share for text sequences, which have no per-row error rate"}
STUDENT_COUPLED = {"kd3", "rad", "student_entropy", "disagreement", "ddk"}
DEDUP_LEVELS = ("exact", "near", "semantic")  # each level runs the ones before it


def dedup_summary(m: dict, cfg: dict) -> dict:
    """What deduplication did, from the manifest's ``method_info.dedup`` (the config as fallback):
    ``method`` the deepest level that ran (None: none), ``threshold``/``frac`` those used, and
    ``requested``, ``removed`` and ``skipped`` (level → why) for the card's text."""
    requested = m.get("dedup_level", cfg.get("dedup"))
    info = (m.get("method_info") or {}).get("dedup")
    if requested in (None, "none") or not isinstance(info, dict):
        return {"method": None if requested == "none" else requested, "threshold": cfg.get("dedup_threshold"),
                "frac": cfg.get("dedup_frac"), "requested": requested, "removed": {}, "skipped": {}}
    removed = {lvl: n for lvl, n in (info.get("removed") or {}).items() if lvl in DEDUP_LEVELS}
    ran = [lvl for lvl in DEDUP_LEVELS if lvl in removed]
    wanted = DEDUP_LEVELS[:DEDUP_LEVELS.index(requested) + 1] if requested in DEDUP_LEVELS else ()
    listed = [str(s) for s in info.get("skipped") or []]  # "near (no pixels given)"
    skipped = {}
    for lvl in wanted:
        if lvl in removed:
            continue
        why = info.get(lvl) if isinstance(info.get(lvl), str) else next((s for s in listed if s.startswith(lvl)), "")
        skipped[lvl] = why.split(":", 1)[1].strip() if why.startswith("skipped:") else why or "not run"
    deepest = ran[-1] if ran else None
    threshold = info.get(f"{deepest}_threshold") if deepest in ("near", "semantic") else None
    return {"method": deepest, "requested": requested, "removed": removed, "skipped": skipped,
            "threshold": threshold if threshold is not None else
            (cfg.get("dedup_threshold") if deepest in ("near", "semantic") else None),
            "frac": info.get("frac", cfg.get("dedup_frac")) if deepest == "semantic" else None}


def dedup_text(d: dict) -> str:
    """One phrase: the levels that ran with their removals, then those skipped and why."""
    ran = ", ".join(f"{md_code(lvl)} removed {n:,} rows" for lvl, n in (d.get("removed") or {}).items())
    skipped = "; ".join(f"{md_code(lvl)} was skipped — {md_text(why)}" for lvl, why in (d.get("skipped") or {}).items())
    return "; ".join(x for x in (ran, skipped) if x)


def _method_line(name: str, info: dict, cfg: dict) -> str:
    text = METHOD_BIASES.get(name)
    if text is None:
        return f"- **{md_code(name)}**: no bias note is recorded for this method; see its documentation."
    rad = info.get("rad") or {}
    rad_error = (f" (this run planned for a teacher error rate of up to {fmt(rad.get('teacher_error'))}, about "
                 f"{fmt(rad.get('mistakes'), 0)} of the rows it drew, estimated from "
                 f"{RAD_ERROR_FROM.get(rad.get('teacher_error_from'), 'the teacher confidence')})"
                 if rad.get("teacher_error") is not None else "")
    recall = cfg.get("critic_recall")
    return "- " + text.format(rad_error=rad_error, critic_recall=f" ({fmt(recall)})" if recall is not None else "",
                              coverage_cut=_coverage_cut(info.get("coverage") or {}))


def _coverage_cut(cov: dict) -> str:
    """This run's tail in numbers (empty when the run recorded none)."""
    if not cov.get("tail_cut"):
        return ""
    if cov.get("label_cut") is not None and cov.get("label_noise") is not None:
        return (f" In this run {cov['tail_cut']:,} candidates were cut: {cov['label_cut']:,} for the teacher's "
                f"disagreement with their label (estimated label noise {fmt(cov['label_noise'])}), then "
                f"{cov.get('ood_cut') or 0:,} of the rest as the least typical.")
    return f" In this run {cov['tail_cut']:,} candidates were cut as the least typical."


def hard_count(m: dict) -> int | None:
    """K, the generated rows HARD was asked for per original row: ``kdata select --hard K`` records
    ``config.hard`` as K, ``kdata augment`` as its whole HARD config (K is its ``per_sample``); both
    record K in the manifest's ``hard.config.per_sample``, which a dataset derived from a HARD one keeps."""
    h = (m.get("config") or {}).get("hard")
    if isinstance(h, dict):
        h = h.get("per_sample")
    if h is None and isinstance(m.get("hard"), dict):
        h = (m["hard"].get("config") or {}).get("per_sample")
    return h if isinstance(h, int) and not isinstance(h, bool) else None


def _student_coupled(methods: list, info: dict) -> bool:
    """The selection depends on the student: a student-coupled method, or MiniPLM with the student as reference."""
    ref = str((info.get("miniplm") or {}).get("reference") or "")
    return any(m in STUDENT_COUPLED for m in methods) or ("miniplm" in methods and ref.startswith("student"))


LABELS_NOTE = ("- **Labels are the teacher's, not the web's.** The soft labels and `teacher_pred` can disagree with "
               "the original `label`; where they do, the kept row carries the teacher's opinion, not ground truth, "
               "and the student inherits the teacher's blind spots.")
LM_LABELS_NOTE = ("- **Soft labels are the teacher's next-token guesses.** The rows are causal-LM text with no "
                  "class label (`label_idx` is −1 and `teacher_pred` empty; `label` keeps the pool's label where it has one); the "
                  "per-token soft labels are the teacher's "
                  "top-k next-token log-probabilities, which can be wrong or skewed to its style, and the student "
                  "inherits the teacher's blind spots.")


def _dedup_line(d: dict) -> str:
    what = dedup_text(d)
    if d.get("method") is None:
        return ("- **Duplicates were not removed.** Near-duplicates and over-represented sources can dominate." +
                (f" ({what}.)" if what else ""))
    near = "" if d["method"] != "exact" else (" Only exact copies were removed: near-duplicates (re-encoded, "
                                              "re-worded or lightly edited copies) remain.")
    return (f"- **Deduplicated ({md_code(d['method'])}).** " + (f"{what[0].upper()}{what[1:]}. " if what else "") +
            "One copy of each duplicate group survived: the better-ranked "
            "one (the default recipe: the one with the smaller permanent random number), so the ranker's "
            "preferences decide which variant remains." + near)


def bias_lines(k: dict, cfg: dict, m: dict | None = None) -> list[str]:
    """The section's lines from the card's ``kdata`` block ``k``, the run's config ``cfg`` and its
    manifest ``m`` (the dedup that ran, the scoring kind)."""
    m = m or {}
    methods = list(k.get("methods") or [])
    info = k.get("method_info") or {}
    L = ["## Biases this selection can introduce", "",
         f"Selected with {md_code(', '.join(methods) or '?')}. What each step tends to over- and under-keep:", ""]
    L += [_method_line(name, info, cfg) for name in methods]
    L.append(LM_LABELS_NOTE if (m.get("scoring") or {}).get("kind") == "causal_lm" else LABELS_NOTE)
    if _student_coupled(methods, info):
        L.append("- **Student coupling.** The scores depend on this student checkpoint "
                 f"({md_code(k['student']['id'])}); "
                 "another student would select other rows.")
    if k.get("balance") == "class":
        L.append("- **Balanced by class.** The budget was spread evenly over the classes the teacher predicts: "
                 "class shares follow the teacher's predictions, not the true labels.")
    elif k.get("balance"):
        L.append(f"- **Balanced by {md_code(k['balance'])}.** The budget was spread evenly over these groups; how they "
                 "are defined decides what is over- and under-kept within them.")
    elif SAMPLER in methods:
        L.append("- **Strata, not balance.** The predicted classes keep their shares of the pool (sampled in "
                 "proportion, every stratum at least once when the budget allows); rare classes stay rare.")
    elif (m.get("scoring") or {}).get("kind") == "causal_lm":  # a causal LM has no classes; its card has domains
        L.append("- **No balancing.** Domain shares follow the method's scores; compare the domain mixture before "
                 "and after (where the pool names domains).")
    else:
        L.append("- **No balancing.** Class shares follow the method's scores; compare the class-balance table.")
    L.append(_dedup_line(dedup_summary({**m, "method_info": info, "dedup_level": m.get("dedup_level", k.get(
        "dedup", {}).get("method"))}, cfg)))
    if k.get("hard"):
        L.append(f"- **Generated rows.** {k['hard']} HARD augmentations per original row were requested where "
                 "teacher and student disagree; they over-represent the augmentation model's transforms.")
    return L + [""]


SAMPLER = "coverage"  # the default recipe's sampler: it takes the budget itself, ranking nothing


def keep_step(k: dict) -> str:
    """The recipe's last step: how the budget was taken (sampled by strata, or the top of the ranking)."""
    size, seed = f"{md_code(k['budget']['spec'])} ({fmt(k['budget']['rows'])} rows)", k["seed"]
    if SAMPLER in k["methods"]:
        return (f"Sample {size} with `{SAMPLER}`: cut the likeliest junk and mislabelled rows, then draw every "
                f"predicted-class × difficulty stratum in proportion, by permanent random numbers (seed {seed}).")
    balanced = f", balanced by {md_code(k['balance'])}" if k["balance"] else ""
    return f"Keep the top {size}{balanced}; ties broken with seed {seed}."
