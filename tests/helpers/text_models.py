"""Tiny real transformers models and text pools for the text tests, built offline in the test.

A byte-level BPE-free tokenizer (each UTF-8 byte one token, plus ``<|endoftext|>``) built with the
``tokenizers`` library, GPT-2 causal LMs with 1 layer and 32-dim embeddings, and a GPT-2 sequence
classifier, all randomly initialised (seeded) and saved with ``save_pretrained`` (safetensors).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import torch

EOS = "<|endoftext|>"


def byte_tokenizer(*, extra: tuple[str, ...] = (), reverse: bool = False):
    """A fast tokenizer over the 256 byte symbols of ByteLevel (no merges), EOS as pad; ``reverse``
    numbers the bytes the other way round (the same splits into other ids)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet, reverse=reverse))}
    for tok in (EOS, *extra):
        vocab[tok] = len(vocab)
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tk.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token=EOS, bos_token=EOS, pad_token=EOS,
                                   model_max_length=1024)
    return fast


def tiny_lm(path: Path, *, seed: int = 0, n_embd: int = 32, n_layer: int = 1, extra_tokens: tuple[str, ...] = (),
            n_positions: int = 128, reverse_bytes: bool = False) -> Path:
    """A randomly initialised GPT-2 causal LM + byte tokenizer saved at ``path``."""
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = byte_tokenizer(extra=extra_tokens, reverse=reverse_bytes)
    torch.manual_seed(seed)
    cfg = GPT2Config(n_layer=n_layer, n_head=2, n_embd=n_embd, vocab_size=len(tok), n_positions=n_positions,
                     bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id)
    model = GPT2LMHeadModel(cfg)
    with torch.no_grad():  # a sharper distribution than the tiny init gives: log-probs spread out
        model.lm_head.weight.mul_(8.0)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return Path(path)


def tiny_classifier(path: Path, *, labels=("neg", "pos"), seed: int = 0) -> Path:
    """A randomly initialised GPT-2 sequence classifier + byte tokenizer saved at ``path``."""
    from transformers import GPT2Config, GPT2ForSequenceClassification

    tok = byte_tokenizer()
    torch.manual_seed(seed)
    cfg = GPT2Config(n_layer=1, n_head=2, n_embd=32, vocab_size=len(tok), n_positions=128,
                     num_labels=len(labels), id2label=dict(enumerate(labels)),
                     label2id={n: i for i, n in enumerate(labels)}, pad_token_id=tok.eos_token_id,
                     bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id)
    model = GPT2ForSequenceClassification(cfg)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return Path(path)


WORDS = ("the cat sat on the mat", "a dog ran in the park", "import os; print(os.getcwd())",
         "Return the sum of two numbers.", "xq\x07zz 0x1f 0x3c !!!", "Open a file and read its lines.")


def write_jsonl(path: Path, n: int = 24, *, domains=("prose", "code", "docs"), extra_lines=()) -> Path:
    """A JSONL pool of ``n`` short texts with ids, labels and domains (+ raw ``extra_lines``)."""
    path = Path(path)
    lines = []
    for i in range(n):
        text = f"{WORDS[i % len(WORDS)]} #{i}"
        lines.append(json.dumps({"sample_id": f"t{i:03d}", "text": text, "label": ["neg", "pos"][i % 2],
                                 "domain": domains[i % len(domains)]}))
    path.write_text("\n".join([*lines, *extra_lines]) + "\n")
    return path


@functools.cache
def text_assets() -> Path:
    """Built once per session: ``t`` (teacher LM), ``s`` (student LM, same tokenizer, smaller),
    ``r`` (reference LM, one extra token: another tokenizer), ``c1``/``c2`` (classifiers) and
    ``pool.jsonl`` (60 texts + an empty one + a one-token one)."""
    import tempfile

    d = Path(tempfile.mkdtemp(prefix="kdata-text-assets-"))
    tiny_lm(d / "t", seed=0)
    tiny_lm(d / "s", seed=1, n_embd=16)
    tiny_lm(d / "r", seed=2, extra_tokens=("<x>",))
    tiny_classifier(d / "c1", seed=0)
    tiny_classifier(d / "c2", seed=1)
    write_jsonl(d / "pool.jsonl", n=60, extra_lines=['{"text": "   "}', '{"sample_id": "one", "text": "a"}'])
    return d


def random_text_dataset(out: Path, *, rows: int = 10) -> Path:
    """A causal-LM text dataset written by ``kdata select --method random`` from ``text_assets()``'s pool,
    teacher and student (CPU, quiet)."""
    from kdata.cli import main

    d = text_assets()
    assert main(["select", "--pool", str(d / "pool.jsonl"), "--teacher", f"hf:{d / 't'}", "--student",
                 f"hf:{d / 's'}", "--method", "random", "--budget", str(rows), "--out", str(out), "--device", "cpu",
                 "--quiet"]) == 0
    return out
