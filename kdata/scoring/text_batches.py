"""Tokenising and batching text for scoring: length buckets, dynamic padding, a token budget.

Rows of a unit are tokenised once per distinct tokenizer, sorted by length and cut into batches
of at most ``batch_size`` rows whose padded size (rows × longest row) stays under a token
budget; each batch is padded only to its own longest row. Results are written back by row
number, so the unit's order is restored. The budget also bounds the logits a causal LM returns
(rows × length × vocabulary ≤ ``LOGIT_ELEMS``), whatever the vocabulary.
"""

from __future__ import annotations

import numpy as np
import torch

from kdata.core.errors import KdataError
from kdata.models.hf_weights import FATAL
from kdata.models.text_tokens import SPECIAL_TOKENS, encode_texts

LOGIT_ELEMS = 1 << 25  # float32 logits per batch (128 MiB per tensor) for a causal LM


def tokenize(model, texts: list[str]) -> list[list[int]]:
    """Token ids of each text with the model's tokenizer, truncated to its ``max_length`` (``encode_texts``)."""
    try:
        return encode_texts(model.tokenizer, texts, max_length=model.max_length)
    except (*FATAL, KdataError):
        raise
    except BaseException as exc:  # noqa: BLE001  (a tokenizer panic on some text: one line naming its file)
        raise _tokenizer_error(model, exc) from None


def _tokenizer_error(model, exc: BaseException):
    from kdata.models.hf import tokenizer_failure

    return tokenizer_failure(getattr(model, "path", "") or getattr(model, "spec", "tokenizer"), exc,
                             "the tokenizer fails on a text of the pool")


def tokenize_bytes(model, texts: list[str]) -> tuple[list[list[int]], np.ndarray]:
    """See ``_tokenize_bytes``; a tokenizer that raises or panics on a text is one line naming its file."""
    try:
        return _tokenize_bytes(model, texts)
    except (*FATAL, KdataError):
        raise
    except BaseException as exc:  # noqa: BLE001
        raise _tokenizer_error(model, exc) from None


def _tokenize_bytes(model, texts: list[str]) -> tuple[list[list[int]], np.ndarray]:
    """``tokenize``'s ids and, per text, the UTF-8 bytes its predicted tokens (positions 1…L−1) cover:
    the text from the end of the first token to the end of the last (a truncated text: its kept
    part). Needs a fast tokenizer's offsets; else the bytes of the decoded tokens after the first."""
    if not texts:
        return [], np.zeros(0, dtype=np.int64)
    tok = model.tokenizer
    if not getattr(tok, "is_fast", False):
        ids = tokenize(model, texts)
        return ids, np.array([len(tok.decode(x[1:], skip_special_tokens=True).encode("utf-8", "replace"))
                              for x in ids], dtype=np.int64)
    enc = tok(texts, truncation=True, max_length=model.max_length, add_special_tokens=SPECIAL_TOKENS,
              return_offsets_mapping=True)
    n = []
    for text, offsets in zip(texts, enc["offset_mapping"]):
        first, last = (offsets[0][1], max(e for _, e in offsets)) if len(offsets) else (0, 0)
        n.append(len(text[first:max(first, last)].encode("utf-8", "surrogatepass")))
    return [list(x) for x in enc["input_ids"]], np.array(n, dtype=np.int64)


def token_budget(tokens_per_batch: int, *, max_length: int, vocab: int | None) -> int:
    """Tokens per batch: ``tokens_per_batch``, lowered so that a causal LM's logits stay under
    ``LOGIT_ELEMS``, never below one full-length row."""
    budget = tokens_per_batch
    if vocab:
        budget = min(budget, LOGIT_ELEMS // max(vocab, 1))
    return max(budget, max_length)


def length_batches(lengths: np.ndarray, *, batch_size: int, tokens: int) -> list[np.ndarray]:
    """Row indices grouped into batches by ascending length: each batch ≤ ``batch_size`` rows and
    rows × its longest length ≤ ``tokens`` (a single longer row goes alone)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(lengths, kind="stable")
    batches, start = [], 0
    while start < len(order):
        stop = start + 1
        while stop < len(order) and stop - start < batch_size and (stop - start + 1) * lengths[order[stop]] <= tokens:
            stop += 1
        batches.append(order[start:stop])
        start = stop
    return batches


def pad(ids: list[list[int]], *, pad_id: int, device: torch.device, min_width: int = 0
        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (input_ids, attention_mask) of a batch, padded to its longest row (at least ``min_width``
    wide: the trainer's batches keep one position even when every text tokenises to nothing)."""
    width = max(min_width, max((len(x) for x in ids), default=0))
    out = np.full((len(ids), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(ids), width), dtype=np.int64)
    for i, x in enumerate(ids):
        out[i, :len(x)] = x
        mask[i, :len(x)] = 1
    return torch.from_numpy(out).to(device), torch.from_numpy(mask).to(device)
