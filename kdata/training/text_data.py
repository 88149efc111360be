"""Curated text shards as training batches, one Parquet row group at a time.

Causal-LM shards (they carry ``teacher_topk_ids``) give per row the teacher-tokenised
``input_ids`` and, per next-token position, the teacher's top-k token ids, their log-probs and
the leftover mass (docs/text.md). Classifier shards give the ``text`` and the teacher's stored
top-k class probabilities, like image shards. Memory stays bounded by a row group: each epoch
the row groups are shuffled with a seeded generator and the rows within each group.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from kdata.core.errors import KdataError
from kdata.dataset.schema import kdata_metadata
from kdata.training.shard_dataset import shard_files

LM_COLUMNS = ("input_ids", "teacher_topk_ids", "teacher_topk_logprobs", "teacher_rest_mass")
CLASSIFIER_COLUMNS = ("text", "teacher_topk_idx", "teacher_topk_prob")


@dataclass(frozen=True)
class Group:
    path: str
    index: int
    rows: int


def shard_kind(source: str | os.PathLike | list) -> str:
    """``causal_lm`` when the shards carry per-token soft labels (``teacher_topk_ids``), ``classifier``
    when they carry text and class soft labels, ``image`` otherwise (read from the first footer only)."""
    files = shard_files(source)
    try:
        pf = pq.ParquetFile(files[0])
        names = pf.schema_arrow.names
        if "teacher_topk_ids" in names:
            return "causal_lm"
        if "text" not in names:
            return "image"
        if "image" not in names or not pf.metadata.num_row_groups:
            return "classifier" if "image" not in names else "image"
        first = pf.read_row_group(0, columns=["image", "text"])  # kdata's shards carry both columns
    except Exception as exc:  # noqa: BLE001
        raise KdataError(f"{files[0]}: cannot read Parquet ({str(exc).splitlines()[0]})") from None
    n = first.num_rows
    text_only = n and first.column("image").null_count == n and first.column("text").null_count < n
    return "classifier" if text_only else "image"


class TextShards:
    """The row groups of curated text shards of one kind; ``batches(epoch=…)`` yields padded batches."""

    def __init__(self, source, *, kind: str, batch_size: int, pad_id: int = 0, seed: int = 0,
                 max_length: int | None = None):
        self.files = shard_files(source)
        self.kind, self.batch_size, self.pad_id, self.seed = kind, batch_size, pad_id, seed
        self.max_length = max_length
        need = LM_COLUMNS if kind == "causal_lm" else CLASSIFIER_COLUMNS
        self.columns = list(need) + (["label_idx", "teacher_topk_logit"] if kind == "classifier" else ["text"])
        self.groups: list[Group] = []
        self.meta: dict = {}
        for f in self.files:
            try:
                pf = pq.ParquetFile(f)
            except Exception as exc:  # noqa: BLE001
                raise KdataError(f"{f}: cannot read Parquet ({str(exc).splitlines()[0]})") from None
            missing = [c for c in need if c not in pf.schema_arrow.names]
            if missing:
                raise KdataError(f"{f}: not {kind} text shards: missing column(s) {', '.join(missing)}")
            self.meta = self.meta or kdata_metadata(pf.schema_arrow)
            self.groups += [Group(str(f), i, pf.metadata.row_group(i).num_rows) for i in range(pf.metadata.num_row_groups)]
        self.columns = [c for c in self.columns if c in pq.read_schema(self.files[0]).names]

    def __len__(self) -> int:
        return sum(g.rows for g in self.groups)

    def steps_per_epoch(self) -> int:
        return -(-len(self) // self.batch_size)

    def batches(self, *, epoch: int):
        """Batches of one epoch (every row once): dicts of tensors, see ``lm_batch`` / ``classifier_batch``."""
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.groups))
        pending: list[dict] = []
        for gi in order:
            g = self.groups[int(gi)]
            table = pq.ParquetFile(g.path).read_row_group(g.index, columns=self.columns)
            rows = table.to_pylist()
            pending += [rows[int(i)] for i in rng.permutation(len(rows))]
            while len(pending) >= self.batch_size:
                yield self._collate(pending[:self.batch_size])
                pending = pending[self.batch_size:]
        if pending:
            yield self._collate(pending)

    def _collate(self, rows: list[dict]) -> dict:
        if self.kind == "causal_lm":
            return lm_batch(rows, pad_id=self.pad_id, max_length=self.max_length)
        return classifier_batch(rows)


def lm_batch(rows: list[dict], *, pad_id: int, max_length: int | None = None) -> dict:
    """Pad rows to the longest: ``input_ids``/``attention_mask`` (B, L); per next-token position
    ``topk_ids`` (B, L−1, k), ``topk_logprobs`` (B, L−1, k), ``rest_mass`` and ``valid`` (B, L−1)."""
    seqs = [r["input_ids"][:max_length] if max_length else r["input_ids"] for r in rows]
    length = max(2, max(len(s) for s in seqs))
    k = next((len(r["teacher_topk_ids"][0]) for r in rows if r["teacher_topk_ids"]), 1)
    b = len(rows)
    ids = np.full((b, length), pad_id, dtype=np.int64)
    mask = np.zeros((b, length), dtype=np.int64)
    tk_ids = np.zeros((b, length - 1, k), dtype=np.int64)
    tk_lp = np.full((b, length - 1, k), -30.0, dtype=np.float32)
    rest = np.zeros((b, length - 1), dtype=np.float32)
    valid = np.zeros((b, length - 1), dtype=bool)
    for i, (r, s) in enumerate(zip(rows, seqs)):
        n = len(s)
        ids[i, :n], mask[i, :n] = s, 1
        m = min(n - 1, len(r["teacher_topk_ids"]))
        if m <= 0:
            continue
        tk_ids[i, :m] = np.asarray(r["teacher_topk_ids"][:m], dtype=np.int64)
        tk_lp[i, :m] = np.asarray(r["teacher_topk_logprobs"][:m], dtype=np.float32)
        rest[i, :m] = np.asarray(r["teacher_rest_mass"][:m], dtype=np.float32)
        valid[i, :m] = True
    return {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask),
            "topk_ids": torch.from_numpy(tk_ids), "topk_logprobs": torch.from_numpy(tk_lp),
            "rest_mass": torch.from_numpy(rest), "valid": torch.from_numpy(valid)}


def classifier_batch(rows: list[dict]) -> dict:
    """Texts, the teacher's top-k class indices, logits and probabilities (B, k), the web label index
    (−1 unknown). Without stored logits the log-probabilities stand in (they differ by a constant)."""
    prob = torch.tensor([r["teacher_topk_prob"] for r in rows], dtype=torch.float32)
    logits = [r.get("teacher_topk_logit") for r in rows]
    logit = (torch.tensor(logits, dtype=torch.float32) if all(x is not None for x in logits)
             else prob.clamp_min(1e-12).log())
    return {"text": [r["text"] or "" for r in rows],
            "topk_idx": torch.tensor([r["teacher_topk_idx"] for r in rows], dtype=torch.long),
            "topk_prob": prob, "topk_logit": logit,
            "labels": torch.tensor([(-1 if r.get("label_idx") is None else r["label_idx"]) for r in rows],
                                   dtype=torch.long)}


def eval_texts(spec: str, *, labelled: bool = False, max_rows: int = 100_000) -> tuple[list[str], list[str | None]]:
    """Texts (and labels) of an evaluation set: a pool spec (``builtin:text-test``, Parquet, JSONL…)
    read through ``open_pool``; rows without text are skipped."""
    from kdata.pools.spec import open_pool

    texts: list[str] = []
    labels: list[str | None] = []
    for unit in open_pool(spec).units:
        t: pa.Table = unit.read()
        if "text" not in t.column_names or t.column("text").null_count == t.num_rows:
            raise KdataError(f"{spec}: evaluation set has no text")
        lab = t.column("label").to_pylist() if "label" in t.column_names else [None] * t.num_rows
        for x, y in zip(t.column("text").to_pylist(), lab):
            if x:
                texts.append(x)
                labels.append(y)
        if len(texts) > max_rows:
            raise KdataError(f"{spec}: evaluation set larger than {max_rows} texts")
    if not texts:
        raise KdataError(f"{spec}: evaluation set has no text")
    return texts, labels
