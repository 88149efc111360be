"""The card's "biases" section: what *this* run's selection can skew, method by method.

Each method keeps a different kind of row (KD³ the confident, prototypical ones; RAD the ones the
student finds confusing; a critic what its labellers accepted…), so one generic text is wrong for
most runs. The section names the methods that ran (from the manifest) and adds the notes that
depend on the rest of the recipe: balancing, deduplication, HARD generation, the student.
"""

from __future__ import annotations

from kdata.report.markdown import fmt, md_code

__all__ = ["METHOD_BIASES", "bias_lines", "hard_count"]

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


def bias_lines(k: dict, cfg: dict) -> list[str]:
    """The section's lines from the card's ``kdata`` block ``k`` and the run's config ``cfg``."""
    methods = list(k.get("methods") or [])
    L = ["## Biases this selection can introduce", "",
         f"Selected with {md_code(', '.join(methods) or '?')}. What each step tends to over- and under-keep:", ""]
    L += [_method_line(m, k.get("method_info") or {}, cfg) for m in methods]
    L.append("- **Labels are the teacher's, not the web's.** The soft labels and `teacher_pred` can disagree with "
             "the original `label`; where they do, the kept row carries the teacher's opinion, not ground truth, "
             "and the student inherits the teacher's blind spots.")
    if any(m in STUDENT_COUPLED for m in methods):
        L.append("- **Student coupling.** The scores depend on this student checkpoint "
                 f"({md_code(k['student']['id'])}); "
                 "another student would select other rows.")
    if k.get("balance") == "class":
        L.append("- **Balanced by class.** The budget was spread evenly over the classes the teacher predicts: "
                 "class shares follow the teacher's predictions, not the true labels.")
    elif k.get("balance"):
        L.append(f"- **Balanced by {md_code(k['balance'])}.** The budget was spread evenly over these groups; how they "
                 "are defined decides what is over- and under-kept within them.")
    else:
        L.append("- **No balancing.** Class shares follow the method's scores; compare the class-balance table.")
    dedup = (k.get("dedup") or {}).get("method")
    if dedup in (None, "none"):
        L.append("- **Duplicates were not removed.** Near-duplicates and over-represented sources can dominate.")
    else:
        L.append(f"- **Deduplicated ({md_code(dedup)}).** One copy of each duplicate group survived: the better-ranked "
                 "one "
                 "(the default recipe: the one with the smaller permanent random number), so the ranker's "
                 "preferences decide which variant remains.")
    if k.get("hard"):
        L.append(f"- **Generated rows.** {k['hard']} HARD augmentations per original row were requested where "
                 "teacher and student disagree; they over-represent the augmentation model's transforms.")
    return L + [""]
