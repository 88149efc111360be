"""Tiny built-in language models ``builtin:text-teacher``, ``builtin:text-student`` and
``builtin:text-reference``: GPT-2-style causal LMs trained on first use and cached.

All three share one byte-level BPE tokenizer (512 tokens: the 256 bytes, ``<|endoftext|>`` and
merges learnt on the teacher's corpus with the ``tokenizers`` library), so token-level
KL(teacher‖student) is defined. Their corpora come from ``kdata.pools.stdlib_text`` (standard
library docstrings, parsed, never imported), disjoint from ``builtin:text-test``:

* teacher — the largest (2 layers, width 96), trained longest on the clean ``train`` split (all domains);
* reference — small (2 layers, width 64), trained on a general mix: half the clean train split
  plus web-like junk (MiniPLM's reference LM, arXiv 2410.17215, models the general corpus);
* student — the smallest (1 layer, width 64), trained briefly on 150 clean paragraphs (past the
  unigram plateau, so distillation refines it instead of racing it out), with much left to distil.

``model_dir(name)`` trains a missing model under a lock (a second process waits and reuses it)
into ``$KDATA_CACHE/models/<name>-<version>-py<python>``, written with ``save_pretrained``
(safetensors) plus the tokenizer files, and returns that directory (what ``hf:`` loading takes).
Seeds are fixed and training runs on one thread, so a rerun on the same machine reproduces the
weights. First use of all three costs well under a minute of CPU.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from kdata.core.errors import KdataError
from kdata.core.extras import require
from kdata.core.lock import exclusive
from kdata.core.paths import cache_dir
from kdata.core.threads import one_thread
from kdata.pools.builtin_text import junk_texts
from kdata.pools.stdlib_text import python_version, split_texts

MODEL_VERSION = "v1"
VOCAB_SIZE = 512
BLOCK = 64  # tokens per training block (texts joined with <|endoftext|>)
N_POSITIONS = BLOCK  # every position the models have is trained: max_length resolves to at most this
EOS = "<|endoftext|>"
SPECS: dict[str, dict] = {
    "text-teacher": {"n_layer": 2, "n_embd": 96, "n_head": 4, "corpus": "train", "steps": 150, "lr": 1e-2,
                     "seed": 101},
    "text-reference": {"n_layer": 2, "n_embd": 64, "n_head": 2, "corpus": "reference", "steps": 60, "lr": 1e-2,
                       "seed": 202},
    "text-student": {"n_layer": 1, "n_embd": 64, "n_head": 2, "corpus": "student", "steps": 80, "lr": 1e-2,
                     "seed": 303},
}
BATCH = 32  # blocks per step
NAMES = tuple(f"builtin:{n}" for n in SPECS)
N_STUDENT_TEXTS = 150


def _name(name: str) -> str:
    bare = name.split(":", 1)[1] if name.startswith("builtin:") else name
    if bare not in SPECS:
        raise KdataError(f"unknown built-in text model '{name}' ({', '.join(NAMES)})")
    return bare


def corpus(kind: str) -> list[str]:
    """The training texts of a built-in model: ``train``, ``reference`` or ``student`` (see module doc)."""
    train = [t for t, _ in split_texts("train")]
    if kind == "train":
        return train
    if kind == "student":
        return train[::max(1, len(train) // N_STUDENT_TEXTS)][:N_STUDENT_TEXTS]
    if kind == "reference":
        junk = [t for _, t in junk_texts(len(train) // 12, rng=np.random.default_rng(4242))]
        return train[::2] + junk
    raise KdataError(f"unknown corpus '{kind}'")


def _build_tokenizer(out: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus("train"), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, unk_token=EOS, pad_token=EOS,
                                   model_max_length=N_POSITIONS)
    fast.save_pretrained(str(out))


def tokenizer_dir() -> Path:
    """The shared tokenizer's directory (built once, under a lock)."""
    path = cache_dir("models") / f"text-tokenizer-{MODEL_VERSION}-py{python_version()}"
    return _cached(path, _build_tokenizer)


def _cached(path: Path, build) -> Path:
    """``path`` built by ``build(tmp)`` once: in a temporary sibling, renamed into place under a lock."""
    if (path / "_SUCCESS").exists():
        return path
    with exclusive(path, wait=True):
        if (path / "_SUCCESS").exists():
            return path
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
        try:
            build(tmp)
            (tmp / "_SUCCESS").write_text("ok\n")
            if path.exists():
                shutil.rmtree(path)  # an unfinished earlier build (no _SUCCESS)
            os.replace(tmp, path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return path


def _blocks(texts: list[str], tokenizer) -> np.ndarray:
    """The texts tokenised, joined with ``<|endoftext|>`` and cut into (N, BLOCK) blocks."""
    ids: list[int] = []
    for enc in tokenizer(texts)["input_ids"]:
        ids += enc + [tokenizer.eos_token_id]
    n = len(ids) // BLOCK
    return np.asarray(ids[:n * BLOCK], dtype=np.int64).reshape(n, BLOCK)


def lr_at(step: int, *, steps: int, lr: float, warmup: int = 10) -> float:
    """Linear warm-up, then cosine decay to 10% of ``lr``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    frac = (step - warmup) / max(1, steps - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))


def _train(name: str, out: Path) -> None:
    """Train ``name`` into ``out`` — with gradients on, whatever the caller's mode (a first use can come
    from inside ``torch.inference_mode()``, e.g. while scoring), and in a fork of the caller's torch RNG
    (the training seeds its own; the caller's global RNG is left as it was). transformers' advisory lines
    (sequence longer than the model) are silenced by the caller, ``kdata.models.hf.text_model_path``, for
    the duration of its call only."""
    import torch

    with torch.inference_mode(False), torch.enable_grad(), torch.random.fork_rng(devices=[]):
        _train_model(name, out)


def _train_model(name: str, out: Path) -> None:
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    spec = SPECS[name]
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir()))
    blocks = torch.from_numpy(_blocks(corpus(spec["corpus"]), tokenizer))
    torch.manual_seed(spec["seed"])
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=N_POSITIONS, n_embd=spec["n_embd"],
                        n_layer=spec["n_layer"], n_head=spec["n_head"], bos_token_id=tokenizer.eos_token_id,
                        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id)
    model = GPT2LMHeadModel(config)
    opt = torch.optim.AdamW(model.parameters(), lr=spec["lr"], weight_decay=0.01)
    rng = np.random.default_rng(spec["seed"])
    order: list[int] = []
    model.train()
    with one_thread():
        for step in range(spec["steps"]):
            if len(order) < BATCH:
                order += rng.permutation(len(blocks)).tolist()
            batch, order = blocks[order[:BATCH]], order[BATCH:]
            for group in opt.param_groups:
                group["lr"] = lr_at(step, steps=spec["steps"], lr=spec["lr"])
            loss = model(input_ids=batch, labels=batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
    model.eval()
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))


def model_dir(name: str) -> Path:
    """The directory of a built-in text model (``builtin:text-teacher|student|reference``): a
    ``transformers`` causal LM with its tokenizer, trained on first use and cached (see module doc)."""
    require("text", "transformers", "tokenizers")  # they train and load it
    bare = _name(name)
    path = cache_dir("models") / f"{bare}-{MODEL_VERSION}-py{python_version()}"
    return _cached(path, lambda tmp: _train(bare, tmp))
