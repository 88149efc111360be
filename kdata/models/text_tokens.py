"""kdata's one tokenisation rule for text models: special tokens (a leading BOS, …) as the tokenizer adds
them by default, truncated to a maximum length.

Scoring (the stored ``input_ids`` and per-token soft labels), the text trainer (its tokenizer check,
eval set and classifier batches) and ``kdata generate``'s prompts all encode through
``encode_texts``, so the positions the shards store and the ones the trainer reads line up, and a
Llama/Mistral/Gemma/OPT-style tokenizer that adds BOS is the same tokenizer everywhere.
"""

from __future__ import annotations

SPECIAL_TOKENS = True  # add the special tokens the tokenizer adds by default


def encode_texts(tokenizer, texts: list[str], *, max_length: int) -> list[list[int]]:
    """Token ids of each text, truncated to ``max_length``, with the tokenizer's default special tokens."""
    if not texts:
        return []
    enc = tokenizer(texts, truncation=True, max_length=max_length, add_special_tokens=SPECIAL_TOKENS)
    return [list(x)[:max_length] for x in enc["input_ids"]]
