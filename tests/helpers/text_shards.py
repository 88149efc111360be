"""Curated text shards written in a test from a real teacher: the contract's per-token columns
(input_ids, the teacher's top-k next-token ids and log-probs, the leftover mass) computed by a
forward pass of a real ``transformers`` causal LM, written as real Parquet."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch


def teacher_topk(model, tokenizer, texts: list[str], *, k: int = 8, max_length: int = 64) -> dict:
    """Per text: input_ids (L), top-k ids / log-probs (L−1 × k) and rest mass (L−1), teacher NLL."""
    cols = {"input_ids": [], "teacher_topk_ids": [], "teacher_topk_logprobs": [], "teacher_rest_mass": [],
            "teacher_nll": []}
    model.eval()
    with torch.inference_mode():
        for text in texts:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"][:max_length]
            x = torch.tensor([ids])
            logp = torch.log_softmax(model(input_ids=x).logits[0, :-1].float(), dim=-1)
            top = logp.topk(k, dim=-1)
            rest = (1 - top.values.exp().sum(-1)).clamp_min(0)
            cols["input_ids"].append(ids)
            cols["teacher_topk_ids"].append(top.indices.tolist())
            cols["teacher_topk_logprobs"].append(top.values.tolist())
            cols["teacher_rest_mass"].append(rest.tolist())
            cols["teacher_nll"].append(float(-logp.gather(1, x[0, 1:, None]).mean()))
    return cols


def write_lm_shards(out: Path, texts: list[str], *, teacher_dir: Path, k: int = 8, max_length: int = 64,
                    files: int = 2, row_group_size: int = 16) -> Path:
    """``out/data/train-*.parquet`` with sample_id, text and the contract's LM columns."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(teacher_dir))
    tok = AutoTokenizer.from_pretrained(str(teacher_dir))
    cols = teacher_topk(model, tok, texts, k=k, max_length=max_length)
    table = pa.table({
        "sample_id": [f"s{i:05d}" for i in range(len(texts))],
        "text": texts,
        "input_ids": pa.array(cols["input_ids"], pa.list_(pa.int32())),
        "teacher_topk_ids": pa.array(cols["teacher_topk_ids"], pa.list_(pa.list_(pa.int32()))),
        "teacher_topk_logprobs": pa.array(cols["teacher_topk_logprobs"], pa.list_(pa.list_(pa.float16()))),
        "teacher_rest_mass": pa.array(cols["teacher_rest_mass"], pa.list_(pa.float16())),
        "teacher_nll": pa.array(cols["teacher_nll"], pa.float32()),
    })
    data = Path(out) / "data"
    data.mkdir(parents=True, exist_ok=True)
    step = -(-table.num_rows // files)
    for i in range(files):
        pq.write_table(table.slice(i * step, step), data / f"train-{i:05d}-of-{files:05d}.parquet",
                       row_group_size=row_group_size)
    return Path(out)


def write_classifier_shards(out: Path, texts: list[str], labels: list[int], probs: list[list[float]],
                            *, k: int = 2) -> Path:
    """Text classifier shards: text, label_idx and the teacher's top-k class indices and probabilities."""
    topk_idx = [sorted(range(len(p)), key=lambda c: -p[c])[:k] for p in probs]
    table = pa.table({
        "sample_id": [f"c{i:05d}" for i in range(len(texts))],
        "text": texts,
        "label_idx": pa.array(labels, pa.int32()),
        "teacher_topk_idx": pa.array(topk_idx, pa.list_(pa.int32())),
        "teacher_topk_prob": pa.array([[p[c] for c in idx] for p, idx in zip(probs, topk_idx)],
                                      pa.list_(pa.float32())),
        "student_pred": pa.array([0] * len(texts), pa.int32()),
    })
    data = Path(out) / "data"
    data.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, data / "train-00000-of-00001.parquet", row_group_size=32)
    return Path(out)


def clean_lm_shards(out: Path, n: int) -> Path:
    """Causal-LM shards of the first ``n`` clean texts of ``builtin:text-web``, written by the built-in teacher."""
    from kdata.models.builtin_text import model_dir
    from kdata.pools.builtin_text import text_web

    pool = text_web(seed=0)
    texts = [t for t, s in zip(pool.column("text").to_pylist(), pool.column("source").to_pylist()) if s == "clean"]
    with torch.inference_mode():
        return write_lm_shards(out, texts[:n], teacher_dir=model_dir("text-teacher"), max_length=64)
