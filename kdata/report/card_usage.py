"""The last sections of the data card: intended uses, how to load the rows (and what to run next), the
files with their checksums. ``c`` is the card's ``kdata.report.card_text.CardContext``."""

from __future__ import annotations

from kdata.report.markdown import md_code, md_table, md_text, printable


def uses(c) -> list[str]:
    return ["## Intended and out-of-scope uses", "",
            (f"- Intended: scoring with `kdata select --pool DIR` into a distillation set for students of "
             f"{md_code(c.k['teacher']['id'])}; auditing what the critic kept and dropped." if c.m.get("generate") else
             f"- Intended: distilling {md_code(c.k['teacher']['id'])} into {md_code(c.k['student']['id'])} or similar "
             "students with a KD loss on the stored soft labels; auditing what the curation kept and dropped."),
            "- Out of scope: evaluation or benchmarking (the selection used the teacher and student, so scores on "
            "this set are biased), training models whose labels must be human-verified, and any use the pool's "
            "licence does not allow.", ""]


def how_to_load(c) -> list[str]:
    images = any(f.get("dtype") == "image" for f in (c.fm.get("dataset_info") or {}).get("features", []))
    return ["## How to load", "",
            "From this directory (paths are relative to it):", "",
            "```python", "import pandas as pd", "df = pd.read_parquet(\"data\")", "",
            "import pyarrow.dataset as ds", "table = ds.dataset(\"data\", format=\"parquet\").to_table()", "",
            "import os", "from datasets import load_dataset",
            "# this directory, read with the `configs` and `dataset_info` of this card (`load_dataset(\".\")` "
            "cannot name it)",
            "train = load_dataset(os.getcwd(), split=\"train\")",
            *(["image = train[0][\"image\"]  # a PIL.Image"] if images else []),
            "```", "",
            *(_next_generated(c) if c.m.get("generate") else _next_curated(c))]


def _seen_from_here(c, role: str):
    """The model's spec as seen from the dataset directory (the card's commands run there)."""
    entry = (c.m.get("models") or {}).get(role)
    seen = entry.get("from_out") if isinstance(entry, dict) else None
    return seen if isinstance(seen, str) and seen else c.k[role]["id"]


def _next_curated(c) -> list[str]:
    student = str(_seen_from_here(c, "student") or "")
    byo = not student or student.startswith("byo:")  # predictions read from a file: no model kdata can load
    return ["Train the student with the kdata trainer" + (" (`STUDENT`: your own student model, any model spec "
                                                          "`kdata train` loads; the predictions file holds none):"
                                                          if byo else ":"), "", "```bash",
            f"kdata train . --student {'STUDENT' if byo else printable(student)}",
            "kdata inspect .          # counts, reasons, scores, checksum verification", "```", "",
            *(_lm_row_columns() if (c.m.get("scoring") or {}).get("kind") == "causal_lm" else _class_row_columns()),
            *_kd_weight(c.m.get("kd_weight"))]


def _kd_weight(entry) -> list[str]:
    """The KD weight ``kdata train`` uses here, for a trainer of one's own (manifest ``kd_weight``)."""
    if not isinstance(entry, dict) or not isinstance(entry.get("alpha"), (int, float)):
        return []
    f = entry.get("kept_fraction")
    return [f"KD weight: `kdata train` uses α = {entry['alpha']} on this set"
            + (f" (kept fraction {f:.3f})" if isinstance(f, (int, float)) else "")
            + f" — {md_text(str(entry.get('rule', '')))}; a trainer of your own can take the same "
            "α·T²·KL(teacher ‖ student) + (1 − α)·CE(label) (manifest `kd_weight`).", ""]


def _lm_row_columns() -> list[str]:
    return ["Each row: `sample_id`, `text`, `label` (the pool's, where it has one), the teacher's tokens `input_ids`, "
            "per token the teacher's top-k next tokens `teacher_topk_ids` with their log-probabilities "
            "`teacher_topk_logprobs` and the leftover mass `teacher_rest_mass` (exp of the log-probabilities plus the "
            "leftover sum to 1), the mean token NLLs `teacher_nll`/`student_nll` (and `reference_nll`), `n_tokens`, "
            "`kl_ts`, `rank` and `score_<method>`; the class soft-label columns are null.", ""]


def _class_row_columns() -> list[str]:
    return ["Each row: `sample_id`, the payload (`image`, the encoded file — a PIL image through `datasets` — or "
            "`text`), `label` (original), `teacher_pred`, "
            "`teacher_topk_idx`/`teacher_topk_prob`/`teacher_topk_logit` (soft labels), `student_pred`, "
            "confidences, `kl_ts`, `rank` and `score_<method>`.", ""]


def _next_generated(c) -> list[str]:
    """A generated dataset holds candidates, not soft labels: score them, then train."""
    student = printable(_seen_from_here(c, "student") or "STUDENT")
    return ["Score the kept candidates with the teacher's per-token soft labels, then train a student on them:", "",
            "```bash", f"kdata select --pool . --teacher {printable(_seen_from_here(c, 'teacher'))} --student {student} "
            "--method random --budget 100% --out ../curated",
            f"kdata train ../curated --student {student}",
            "kdata inspect .          # counts, reasons, critic scores, checksum verification", "```", "",
            "Each row: `sample_id` (`<prompt id>:<j>`), `text` (the continuation), `prompt`, `parent_id` (the prompt "
            "id), the decoding settings (`temperature`, `top_p`, `max_new_tokens`, `seed`), the teacher's sampled "
            "`gen_token_ids` / `gen_token_logprobs` / `gen_teacher_nll`, `finish` and `score_critic`.", ""]


def files(c) -> list[str]:
    rows = [[md_code(f["path"]), f["rows"], md_code(f"{f['sha256'][:16]}…")] for f in c.m.get("files", [])]
    return ["## Files", ""] + md_table(["file", "rows", "sha256"], rows) + [
        "", "`decisions.parquet` holds one row per input sample; `manifest.json` the checksums, config and "
        "counts. Regenerate this card with `kdata card DIR`.", ""]
