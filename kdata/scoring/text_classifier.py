"""Sequence-classifier scoring of a unit's texts: the image classifiers' per-sample statistics.

Teacher and student each tokenise the batch (once when they share a tokenizer); their logits
go through ``kdata.core.stats.disagreement`` exactly as image logits do, so the columns (and
every selection method) are the same as for an image run.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

from kdata.core.exact_probs import exact_columns, keeps_logits
from kdata.core.stats import disagreement
from kdata.scoring.score import score_columns
from kdata.scoring.text_batches import length_batches, pad, token_budget, tokenize


def _logits(model, ids: list[list[int]], device) -> torch.Tensor:
    x, mask = pad(ids, pad_id=model.pad_id, device=device)
    return model.model(input_ids=x, attention_mask=mask).logits.float()


def classifier_rows(texts: list[str], labels: np.ndarray, models, *, config, device
                    ) -> tuple[dict[str, pa.Array], list[tuple[int, str]]]:
    """Columns (in row order) of the classifier statistics of ``texts``; nothing is quarantined here."""
    t, s = models.teacher, models.student
    ids_t = tokenize(t, texts)
    ids_s = ids_t if models.shared else tokenize(s, texts)
    keep_logits = keeps_logits(config.keep_logits, t.num_classes)
    budget = token_budget(config.tokens_per_batch, max_length=max(t.max_length, s.max_length), vocab=None)
    chunks: dict[str, list[np.ndarray]] = {}
    order = []
    for rows in length_batches(np.array([len(x) for x in ids_t]), batch_size=config.batch_size, tokens=budget):
        zt = _logits(t, [ids_t[r] for r in rows], device)
        zs = _logits(s, [ids_s[r] for r in rows], device)
        li = torch.from_numpy(np.asarray(labels, dtype=np.int32)[rows]).to(zt.device)
        st = disagreement(zt, zs, temperature=config.temperature, topk=config.topk, label_idx=li)
        if keep_logits:
            st.update(teacher_logits=zt, student_logits=zs)
        else:
            st.update(exact_columns(zt, zs, temperature=config.temperature, label_idx=li))
        for k, v in st.items():
            chunks.setdefault(k, []).append(v.cpu().numpy())
        order.append(rows)
    if not order:
        return {}, []
    inv = np.argsort(np.concatenate(order), kind="stable")  # back to row order
    cols = score_columns({k: [np.concatenate(v)[inv]] for k, v in chunks.items()})
    return cols, []
