"""Causal-LM scoring of a unit's texts: the sequence-level and per-token columns (docs/text.md).

Batches are formed on the teacher's tokens (``kdata.scoring.text_batches``); a student with the
same tokenizer runs on the same padded batch (so ``kl_ts`` compares the same positions), a
student or reference with another tokenizer is run on its own tokens for its NLL only. Per-token
means of two tokenizers are not comparable (nats per reference token vs per teacher token), so
such a model's NLL is taken per UTF-8 byte of the text its predicted tokens cover and expressed
over the teacher's predicted bytes: ``*_nll_sum`` = (Σ NLL / its bytes) × the teacher's bytes and
``*_nll`` = that / (L − 1), both in the teacher's units. With one tokenizer this is the plain
per-token value, so MiniPLM's ``reference_nll − teacher_nll`` means the same either way.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from kdata.dataset.schema import TEXT_LM_COLUMNS
from kdata.scoring.text_batches import length_batches, pad, token_budget, tokenize, tokenize_bytes
from kdata.scoring.text_stats import lm_logprobs, nll_sums, ragged, teacher_batch

_f32, _i32, _f16 = pa.float32(), pa.int32(), pa.float16()
LM_COLUMNS = TEXT_LM_COLUMNS  # every column a causal-LM scores table (and its shards) may carry
LM_SCHEMA = pa.schema([pa.field("sample_id", pa.string()), pa.field("label_idx", _i32),
                       *[pa.field(k, v) for k, v in LM_COLUMNS.items() if not k.startswith("reference")]])


def _nll_sums(model, ids: list[list[int]], *, config, device) -> np.ndarray:
    """Σ token NLL per row of ``ids`` under ``model`` (NaN below two tokens)."""
    lengths = np.array([len(x) for x in ids], dtype=np.int64)
    sums = np.full(len(ids), np.nan, dtype=np.float64)
    budget = token_budget(config.tokens_per_batch, max_length=model.max_length, vocab=model.vocab_size)
    usable = np.flatnonzero(lengths >= 2)
    for b in length_batches(lengths[usable], batch_size=config.batch_size, tokens=budget):
        rows = usable[b]
        x, mask = pad([ids[r] for r in rows], pad_id=model.pad_id, device=device)
        sums[rows] = nll_sums(model, x, mask).double().cpu().numpy()
    return sums


def _nll_other_tokenizer(model, texts: list[str], t_bytes: np.ndarray, n_pred: np.ndarray, *, config, device
                         ) -> tuple[np.ndarray, np.ndarray]:
    """(mean, sum) NLL in the teacher's units of a model with another tokenizer: its nats per byte
    of the text its predicted tokens cover, times the teacher's predicted bytes (÷ L − 1 for the mean)."""
    ids, own_bytes = tokenize_bytes(model, texts)
    per_byte = _nll_sums(model, ids, config=config, device=device) / np.where(own_bytes > 0, own_bytes, np.nan)
    total = per_byte * np.where(t_bytes > 0, t_bytes, np.nan)
    return total / n_pred, total


def _nested(parts: list[np.ndarray], inner_type: pa.DataType) -> pa.Array:
    """Rows of (positions, k) arrays → list<list<…>> (each inner list k long)."""
    flat, outer = ragged([p.reshape(-1) for p in parts])
    k = parts[0].shape[1] if parts else 0
    n_pos = int(outer[-1]) // max(k, 1)
    inner = pa.ListArray.from_arrays(pa.array(np.arange(0, n_pos * k + 1, max(k, 1), dtype=np.int32)[:n_pos + 1]),
                                     pa.array(flat.astype(inner_type.to_pandas_dtype()), inner_type))
    return pa.ListArray.from_arrays(pa.array(outer // max(k, 1), _i32), inner)


def _flat_lists(parts: list[np.ndarray], value_type: pa.DataType) -> pa.Array:
    flat, offsets = ragged(parts)
    return pa.ListArray.from_arrays(pa.array(offsets, _i32), pa.array(flat.astype(value_type.to_pandas_dtype()),
                                                                       value_type))


def _teacher_pass(ids: list[list[int]], models, *, topk: int, config, device) -> tuple[dict, list, list, list]:
    """Teacher (and same-tokenizer student) over length-bucketed batches; results by row."""
    t, s = models.teacher, models.student
    n = len(ids)
    seq = {k: np.full(n, np.nan, dtype=np.float64) for k in ("teacher_nll_sum", "teacher_entropy",
                                                             "student_nll_sum", "kl_ts")}
    top_i, top_v, rest = [None] * n, [None] * n, [None] * n
    vocab = max(t.vocab_size, s.vocab_size if models.shared else 0)
    budget = token_budget(config.tokens_per_batch, max_length=t.max_length, vocab=vocab)
    for rows in length_batches(np.array([len(x) for x in ids]), batch_size=config.batch_size, tokens=budget):
        x, mask = pad([ids[r] for r in rows], pad_id=t.pad_id, device=device)
        logp_s = lm_logprobs(s, x, mask) if models.shared else None
        out = teacher_batch(lm_logprobs(t, x, mask), x, mask, k=topk, logp_s=logp_s)
        del logp_s
        for k, values in seq.items():
            if k in out:
                values[rows] = out[k].double().cpu().numpy()
        ti, tv, tr = (out[k].cpu().numpy() for k in ("topk_ids", "topk_logprobs", "rest_mass"))
        for j, r in enumerate(rows):
            m = len(ids[r]) - 1
            top_i[r], top_v[r], rest[r] = ti[j, :m], tv[j, :m], tr[j, :m]
    return seq, top_i, top_v, rest


def lm_rows(texts: list[str], models, *, config, device) -> tuple[dict[str, pa.Array], list[tuple[int, str]]]:
    """Columns (in row order) of the causal-LM scores of ``texts``, and [(row, reason)] to quarantine
    (texts of fewer than two teacher tokens: nothing to predict)."""
    ref = models.reference
    same = models.shared and (ref is None or models.ref_shared)
    ids, t_bytes = (tokenize(models.teacher, texts), None) if same else tokenize_bytes(models.teacher, texts)
    bad = [(i, f"too_short: {len(x)} token(s); a causal LM needs 2") for i, x in enumerate(ids) if len(x) < 2]
    ids = [x if len(x) >= 2 else x + [models.teacher.pad_id] * (2 - len(x)) for x in ids]  # scored, then dropped
    k = min(config.token_topk, models.teacher.vocab_size)
    seq, top_i, top_v, rest = _teacher_pass(ids, models, topk=k, config=config, device=device)
    n_pred = np.array([len(x) - 1 for x in ids], dtype=np.float64)
    cols = {"teacher_nll": seq["teacher_nll_sum"] / n_pred, "teacher_nll_sum": seq["teacher_nll_sum"],
            "teacher_entropy": seq["teacher_entropy"], "kl_ts": seq["kl_ts"]}
    if models.shared:
        cols.update(student_nll=seq["student_nll_sum"] / n_pred, student_nll_sum=seq["student_nll_sum"])
    else:
        cols["student_nll"], cols["student_nll_sum"] = _nll_other_tokenizer(models.student, texts, t_bytes, n_pred,
                                                                            config=config, device=device)
    if ref is not None and models.ref_shared:
        sums = _nll_sums(ref, ids, config=config, device=device)
        cols.update(reference_nll=sums / n_pred, reference_nll_sum=sums)
    elif ref is not None:
        cols["reference_nll"], cols["reference_nll_sum"] = _nll_other_tokenizer(ref, texts, t_bytes, n_pred,
                                                                                config=config, device=device)
    out = {k: pa.array(v.astype(np.float32), _f32, from_pandas=True) for k, v in cols.items()}
    if not models.shared:
        out["kl_ts"] = pa.nulls(len(texts), _f32)  # different tokenizers: no per-token comparison
    out["n_tokens"] = pa.array(np.array([len(x) for x in ids], dtype=np.int32), _i32)
    empty = np.zeros((0, k))
    out["input_ids"] = _flat_lists([np.asarray(x, dtype=np.int32) for x in ids], _i32)
    out["teacher_topk_ids"] = _nested([p if p is not None else empty for p in top_i], _i32)
    out["teacher_topk_logprobs"] = _nested([p if p is not None else empty for p in top_v], _f16)
    out["teacher_rest_mass"] = _flat_lists([p if p is not None else np.zeros(0) for p in rest], _f16)
    return out, bad
