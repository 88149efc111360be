"""MiniPLM difference sampling (Gu et al., arXiv 2410.17215).

MiniPLM refines the pre-training corpus of a student LM offline with the teacher: an instance is
worth distilling when the *large* teacher finds it much more likely than a *small reference*
model does — it carries knowledge the teacher has and a small model lacks — while instances
both find easy (common, trivial) or both find unlikely (noise) are down-sampled:

    score(x) = log p_teacher(x) − log p_reference(x)     (text: mean over the tokens of x)

and the top fraction by score is kept (kdata: the top ``budget`` rows).

Classification (kdata's image case): x's "likelihood" is the probability of its label,
y = the web label when known (``label_idx ≥ 0``), otherwise the teacher's prediction:

    score_i = log p_T(y_i | x_i) − log p_ref(y_i | x_i)

The reference is any second model spec (``--reference``, SelectConfig.reference); the pipeline
scores the pool with it (cached like every scoring) and passes its log-probabilities here as
``reference=`` (a table of ``sample_id`` + ``ref_logits``). Without ``--reference`` the student
serves as the reference (the paper's reference is a small model of the student's size).

Causal LMs scored by kdata (``hf:PATH`` models, ``kdata.scoring.text``): the scores carry
``teacher_nll`` and ``reference_nll`` (mean NLL per teacher token; a reference with another
tokenizer is measured per byte and put in the teacher's units, ``kdata.scoring.text_lm``) and the
score is ``reference_nll − teacher_nll``, MiniPLM's per-instance difference (``text_difference``).

Bring-your-own (text/LLM): a ``--scores`` Parquet with per-token log-probabilities in columns
``teacher_logprob`` and ``reference_logprob`` (a number per row, or a list per row = one value
per token) is scored directly with the per-token mean, no class structure needed.

Defaults: label = web label if known else teacher prediction; probabilities floored at 1e-12.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from kdata.core.errors import KdataError
from kdata.selection.methods import MethodResult, register
from kdata.selection.methods.view import ScoreView

FLOOR = 1e-12


def token_mean(table: pa.Table, name: str) -> np.ndarray:
    """Per-row mean of a number or list-of-numbers column (NaN for empty lists)."""
    col = table.column(name).combine_chunks()
    if pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
        import pyarrow.compute as pc

        lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False).astype(np.float64)
        flat = pc.list_flatten(col).to_numpy(zero_copy_only=False).astype(np.float64)
        row = np.repeat(np.arange(len(lengths)), lengths.astype(np.int64))
        sums = np.where(lengths > 0, np.bincount(row, weights=flat, minlength=len(lengths)), np.nan)
        return sums / np.where(lengths > 0, lengths, 1)
    return col.to_numpy(zero_copy_only=False).astype(np.float64)


def _label_logprob(view: ScoreView, who: str, y: np.ndarray) -> np.ndarray:
    """log p_who(y | x): from the logits, else the exact value stored at scoring (y is the same: the
    label when known, else the teacher's prediction), else from the top-k soft labels."""
    if view.exact(f"{who}_y_logprob"):
        return view.col(f"{who}_y_logprob").astype(np.float64)
    return view.log_prob_at(who, y, floor=FLOOR)


def reference_logprob(reference: pa.Table, ids: np.ndarray, y: np.ndarray, *, temperature: float,
                      label_known: np.ndarray | None = None) -> np.ndarray:
    """log p_ref(y | x) for ``ids`` from ``reference_scores``' table: from ``ref_logits`` (list<float>) at
    ``temperature``; above 128 classes ``ref_y_logprob`` where ``label_known`` (y is the label there), else
    the reference's top-20 with the rest of the mass spread evenly."""
    from kdata.core.arrow_lists import list_matrix

    pos = {s: i for i, s in enumerate(reference.column("sample_id").to_pylist())}
    try:
        idx = np.array([pos[s] for s in ids], dtype=np.int64)
    except KeyError as exc:
        raise KdataError(f"miniplm: the reference scores have no row for sample '{exc.args[0]}'") from None
    if "ref_logits" not in reference.column_names:  # large C: exact where the label is known, else top-k
        ti = list_matrix(reference, "ref_topk_idx", where="scores table", dtype=np.int64)[idx]
        tv = list_matrix(reference, "ref_topk_prob", where="scores table", dtype=np.float64)[idx]
        c = int(reference.schema.metadata.get(b"num_classes", b"0")) if reference.schema.metadata else 0
        rest = np.clip(1 - tv.sum(1), 0, None) / max(c - ti.shape[1], 1)
        hit = ti == y[:, None]
        out = np.log(np.maximum(np.where(hit.any(1), (tv * hit).sum(1), rest), FLOOR))
        if label_known is not None and "ref_y_logprob" in reference.column_names:
            exact = reference.column("ref_y_logprob").to_numpy(zero_copy_only=False).astype(np.float64)[idx]
            out = np.where(label_known, exact, out)
        return out
    out = np.empty(len(ids))
    logits = list_matrix(reference, "ref_logits", where="scores table")
    for i in range(0, len(ids), 65_536):
        z = logits[idx[i:i + 65_536]].astype(np.float64) / temperature
        z -= z.max(1, keepdims=True)
        lse = np.log(np.exp(z).sum(1))
        out[i:i + 65_536] = z[np.arange(len(z)), y[i:i + 65_536]] - lse
    return out


@register("miniplm", needs=("reference",), doc="MiniPLM: log p_teacher − log p_reference, top fraction (arXiv 2410.17215)")
def miniplm(view: ScoreView, *, budget, seed, reference: pa.Table | None = None, **_) -> MethodResult:
    if view.has("teacher_nll"):  # causal-LM text scored by kdata (kdata.scoring.text)
        return text_difference(view)
    if view.has("teacher_logprob") and view.has("reference_logprob"):
        s = token_mean(view.table, "teacher_logprob") - token_mean(view.table, "reference_logprob")
        return MethodResult(score=np.nan_to_num(s, nan=-np.inf), info={"source": "per-token logprob columns"})
    label = view.col("label_idx").astype(np.int64) if view.has("label_idx") else np.full(len(view), -1)
    pred = view.col("teacher_pred").astype(np.int64)
    y = np.where((label >= 0) & (label < view.num_classes), label, pred)
    lt = _label_logprob(view, "teacher", y)
    if reference is not None:
        lr = reference_logprob(reference, view.sample_ids, y, temperature=view.temperature,
                               label_known=(label >= 0) & (label < view.num_classes))
        src = "reference model"
    else:
        lr = _label_logprob(view, "student", y)
        src = "student as reference"
    return MethodResult(score=lt - lr, info={"reference": src, "label_known": int((label >= 0).sum())})


def text_difference(view: ScoreView) -> MethodResult:
    """Causal-LM rows: score = loss_ref − loss_teacher with loss = mean token NLL of the sequence.

    This is the difference MiniPLM's code computes per instance (thu-coai/MiniPLM:
    ``scripts/miniplm/difference_sampling/compute_difference_scores.py`` takes ``small_scores −
    large_scores`` over per-sequence LM losses, ``construct_pretrain_data.py`` sorts them descending
    and keeps the top ``ratio``), i.e. mean log p_T − mean log p_ref. Without a ``reference_nll``
    column the student's NLL stands in (the default recipe without --reference)."""
    lt = view.col("teacher_nll").astype(np.float64)
    if view.has("reference_nll"):
        lr, src = view.col("reference_nll").astype(np.float64), "reference model (mean NLL per teacher token)"
    else:
        lr, src = view.col("student_nll").astype(np.float64), "student as reference (mean NLL per teacher token)"
    s = lr - lt
    return MethodResult(score=np.nan_to_num(s, nan=-np.inf), info={"reference": src,
                                                                    "mean_score": float(np.nanmean(s)) if len(s) else 0.0})


def reference_scores(pool, model, *, device, batch_size: int = 256, cache: bool = True, like=None) -> pa.Table:
    """Score ``pool`` with the reference ``model``: a table of sample_id + ref_logits (cached).

    ``like`` is the run's ``ScoreConfig``: the reference is scored at its precision, temperature, batch
    size, workers and pixel cap (an fp32 run's reference is fp32 too). Above 128 classes the table holds
    the reference's top-20 and ``ref_y_logprob``, log p_ref(label) exact from the full logits where the
    row's label is known (``kdata.core.exact_probs``: y is the label then, as in ``miniplm``)."""
    from dataclasses import replace

    from kdata.scoring.score import ScoreConfig, score_pool

    cfg = ScoreConfig(batch_size=batch_size, topk=20, embeddings=False, keep_logits="auto")
    if like is not None:
        cfg = replace(like, topk=20, embeddings=False, load_embeddings=False, keep_logits="auto")
    scores, _, _ = score_pool(pool, model, model, config=cfg, device=device, cache=cache)
    if "teacher_logits" in scores.column_names:  # C ≤ 128: exact
        return pa.table({"sample_id": scores.column("sample_id"), "ref_logits": scores.column("teacher_logits")})
    # large C: the reference's top-20 (memory N × 20 instead of N × C) and the exact log p_ref(label)
    t = pa.table({"sample_id": scores.column("sample_id"), "ref_topk_idx": scores.column("teacher_topk_idx"),
                  "ref_topk_prob": scores.column("teacher_topk_prob"),
                  "ref_y_logprob": scores.column("teacher_y_logprob")})
    return t.replace_schema_metadata({"num_classes": str(model.num_classes), "temperature": str(cfg.temperature)})
