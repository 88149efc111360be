"""Text scoring throughput: the pipeline's tokens/s against the bare teacher + student forward.

The pipeline (``kdata.scoring.text.score_text_pool``: read the JSONL unit, check texts, tokenise,
length-bucket, forward teacher and student, log-softmax, per-token top-k + leftover mass, NLL,
entropy and KL, Arrow columns, the per-unit cache write) against the bare forward of the same two
models on the *same* padded batches (tokenised and padded beforehand, outside the timing), in the
same process. Rounds alternate and the best of each is kept; the ratio pipeline / bare is printed
(target ≥ 0.8 on a CPU).

Models: GPT-2-style causal LMs randomly initialised here (teacher 4 layers × 256, student
2 layers × 128) with a byte-level tokenizer built with ``tokenizers``; texts: docstrings of the
Python standard library (nothing is downloaded).

    python benchmarks/score_text.py            # ~1 minute on 2 CPU cores; writes docs/benchmarks/score_text.md
    python benchmarks/score_text.py --n 600 --max-length 256 --rounds 3   # ~5 minutes
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent

def stdlib_texts(n: int) -> list[str]:
    """Docstrings of standard-library modules, functions and classes (≥ 40 characters)."""
    out = []
    for name in sorted(sys.stdlib_module_names):
        if name.startswith("_") or name in ("antigravity", "this", "idlelib", "tkinter", "turtle"):
            continue
        try:
            mod = importlib.import_module(name)
        except Exception:  # noqa: BLE001  (platform-specific modules)
            continue
        for obj in [mod, *vars(mod).values()]:
            doc = getattr(obj, "__doc__", None)
            if isinstance(doc, str) and len(doc) >= 40 and doc not in out:
                out.append(doc.strip())
                if len(out) >= n:
                    return out
    return out


def build_models(root: Path, *, max_len: int) -> tuple[Path, Path]:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    vocab["<|endoftext|>"] = len(vocab)
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tk.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    paths = []
    for name, layers, width in (("teacher", 4, 256), ("student", 2, 128)):
        torch.manual_seed(len(paths))
        cfg = GPT2Config(n_layer=layers, n_head=4, n_embd=width, vocab_size=len(tok), n_positions=max_len,
                         bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id)
        GPT2LMHeadModel(cfg).save_pretrained(root / name)
        tok.save_pretrained(root / name)
        paths.append(root / name)
    return paths[0], paths[1]


def bare_forward(models, batches) -> float:
    """Seconds for teacher + student forward over the prepared batches."""
    t0 = time.perf_counter()
    with torch.inference_mode():
        for x, mask in batches:
            _ = models.teacher.model(input_ids=x, attention_mask=mask).logits
            _ = models.student.model(input_ids=x, attention_mask=mask).logits
    return time.perf_counter() - t0


def prepared_batches(models, texts, config):
    from kdata.scoring.text_batches import length_batches, pad, token_budget, tokenize

    ids = tokenize(models.teacher, texts)
    budget = token_budget(config.tokens_per_batch, max_length=models.teacher.max_length,
                          vocab=models.teacher.vocab_size)
    out = []
    for rows in length_batches(np.array([len(x) for x in ids]), batch_size=config.batch_size, tokens=budget):
        out.append(pad([ids[r] for r in rows], pad_id=models.teacher.pad_id, device=torch.device("cpu")))
    return out, sum(len(x) for x in ids)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=150, help="texts in the pool")
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--no-write", action="store_true", help="do not write docs/benchmarks/score_text.md")
    args = ap.parse_args(argv)
    os.environ.setdefault("KDATA_CACHE", tempfile.mkdtemp(prefix="kdata-bench-text-"))
    from kdata.models.hf import load_hf, quiet_transformers
    from kdata.pools.spec import open_pool
    from kdata.scoring.text import TextScoreConfig, score_text_pool, text_models

    quiet_transformers()
    root = Path(tempfile.mkdtemp(prefix="kdata-bench-text-"))
    texts = stdlib_texts(args.n)
    (root / "pool.jsonl").write_text("".join(json.dumps({"sample_id": f"d{i}", "text": t}) + "\n"
                                             for i, t in enumerate(texts)))
    t_path, s_path = build_models(root, max_len=args.max_length)
    models = text_models(load_hf(t_path, max_length=args.max_length), load_hf(s_path, max_length=args.max_length))
    config = TextScoreConfig()
    batches, tokens = prepared_batches(models, texts, config)
    pool = open_pool(str(root / "pool.jsonl"))
    bare, pipe = [], []
    bare_forward(models, batches[:2])  # warm-up
    for _ in range(args.rounds):
        bare.append(bare_forward(models, batches))
        t0 = time.perf_counter()
        score_text_pool(open_pool(str(root / "pool.jsonl")) if pipe else pool, models, config=config, cache=False)
        pipe.append(time.perf_counter() - t0)
    res = {"texts": len(texts), "tokens": tokens, "threads": torch.get_num_threads(),
           "bare_tokens_per_s": tokens / min(bare), "pipeline_tokens_per_s": tokens / min(pipe),
           "ratio": min(bare) / min(pipe)}
    if args.json:
        print(json.dumps(res))
    else:
        print(f"{res['texts']} texts, {tokens} teacher tokens, {res['threads']} threads")
        print(f"bare teacher+student forward: {res['bare_tokens_per_s']:,.0f} tokens/s")
        print(f"pipeline (score_text_pool):   {res['pipeline_tokens_per_s']:,.0f} tokens/s")
        print(f"ratio pipeline / bare: {res['ratio']:.2f} (target >= 0.8 on CPU)")
    if not args.no_write:
        write_docs(res, argv)
    return 0


def write_docs(res: dict, argv) -> None:
    """The table of docs/benchmarks/score_text.md, from this run (``benchmarks/doc_tables.splice``)."""
    import runpy

    cmd = " ".join(["python benchmarks/score_text.py", *(argv if argv is not None else sys.argv[1:])])
    md = (f"{res['texts']} texts ({res['tokens']:,} teacher tokens), {res['threads']} torch threads, "
          f"{os.cpu_count()} CPU cores, best of the rounds:\n\n    {cmd.strip()}\n\n"
          "| what | tokens/s |\n|---|---:|\n"
          f"| bare teacher + student forward on the same batches | {res['bare_tokens_per_s']:,.0f} |\n"
          f"| pipeline (`score_text_pool`: read, tokenise, bucket, forward, statistics, top-k) | "
          f"{res['pipeline_tokens_per_s']:,.0f} |\n"
          f"| **ratio pipeline / bare** (target ≥ 0.8 on a CPU) | **{res['ratio']:.2f}** |\n")
    runpy.run_path(str(HERE / "doc_tables.py"))["splice"]("score_text", md)


if __name__ == "__main__":
    sys.exit(main())
