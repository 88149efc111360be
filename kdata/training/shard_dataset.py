"""A PyTorch ``IterableDataset`` over curated shards that streams one Parquet row group at a time.

Memory stays bounded by a row group (the writer caps them, 1,000 rows by default), whatever the
size of the dataset: the shards are never loaded whole. Row groups are the unit of work: each
epoch they are shuffled with a seeded generator and dealt round-robin to the DataLoader's worker
processes, which read, decode (``kdata.models.images.decode_image``) and shuffle within their row group.
Every row of the dataset is yielded exactly once per epoch across all workers.

Each item is ``(image, topk_idx, topk_logit, topk_prob, label_idx)``: the normalised image
tensor (C, H, W), the teacher's stored top-k class indices (int64), raw logits and probabilities
(float32, the probabilities at the scoring temperature), and the web label as a class index
(-1 when unknown). The teacher is never run during training.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import IterableDataset, get_worker_info

from kdata.dataset.schema import kdata_metadata, validate_shard
from kdata.core.errors import KdataError
from kdata.models.images import decode_image

COLUMNS = ("image", "label_idx", "teacher_topk_idx", "teacher_topk_logit", "teacher_topk_prob")


@dataclass(frozen=True)
class RowGroup:
    path: str
    index: int
    rows: int


def shard_files(source: str | os.PathLike | list) -> list[Path]:
    """The shard files of a curated dataset dir (manifest order), a ``data/`` dir, a file or a list."""
    if isinstance(source, (list, tuple)):
        return [Path(p) for p in source]
    p = Path(source)
    if p.is_file():
        return [p]
    if not p.is_dir():
        raise KdataError(f"{p}: not found (expected a curated dataset directory or a Parquet file)")
    from kdata.dataset.writer import shard_paths

    files = shard_paths(p) if (p / "manifest.json").exists() else []
    if not files:
        files = sorted(f for f in p.rglob("*.parquet") if not f.name.startswith(".") and f.name != "decisions.parquet")
    if not files:
        raise KdataError(f"{p}: no curated shards found (no data/*.parquet)")
    return files


def dataset_root(source) -> Path | None:
    """The curated dataset directory (the one holding ``manifest.json``) that ``source`` belongs to:
    the directory itself, its ``data/`` folder, or one of its shard files; None otherwise."""
    if isinstance(source, (list, tuple)):
        return None
    p = Path(source)
    cands = [p] if p.is_dir() else []
    if p.is_file():
        p = p.parent
    if p.name == "data":  # OUT/data or a shard inside it
        cands.append(p.parent)
    return next((c for c in cands if (c / "manifest.json").is_file()), None)


def shard_class_names(source) -> list[str] | None:
    """The class names the soft labels of ``source`` index: its manifest's, else its first shard's metadata."""
    root = dataset_root(source)
    try:
        manifest = json.loads((root / "manifest.json").read_text()) if root else {}
    except (OSError, ValueError):
        manifest = {}
    names = manifest.get("class_names") if isinstance(manifest, dict) else None
    if names is None:
        try:  # an unreadable source is reported, with its file, when the trainer opens it
            names = kdata_metadata(pq.read_schema(shard_files(source)[0])).get("class_names")
        except Exception:
            return None
    return list(names) if isinstance(names, list) else None


def verify_source(source) -> bool:
    """Check the curated dataset behind ``source`` against its manifest before training on it
    (every checksum, every count: ``kdata.dataset.writer.verify``); True when it was checked,
    False when there is no manifest to check against. A damaged dataset raises ``KdataError``."""
    root = dataset_root(source)
    if root is None:
        return False
    from kdata.dataset.writer import require_intact

    require_intact(root, refusal="not training on it", hint=", --no-verify trains anyway")
    return True


def row_groups(files: list[Path]) -> tuple[list[RowGroup], dict]:
    """Every row group of ``files`` (from the footers only) and the shards' ``kdata`` metadata."""
    groups: list[RowGroup] = []
    meta: dict = {}
    for f in files:
        try:
            pf = pq.ParquetFile(f)
        except Exception as exc:
            raise KdataError(f"{f}: cannot read Parquet ({str(exc).splitlines()[0]})") from None
        schema = pf.schema_arrow
        validate_shard(schema, where=str(f))
        if "image" not in schema.names:
            raise KdataError(f"{f}: the trainer needs an 'image' column (text shards are not supported)")
        meta = meta or kdata_metadata(schema)
        md = pf.metadata
        groups += [RowGroup(str(f), i, md.row_group(i).num_rows) for i in range(md.num_row_groups)]
    return groups, meta


class ShardDataset(IterableDataset):
    """Stream (image, topk_idx, topk_logit, topk_prob, label_idx) from curated shards, row group by row group.

    ``set_epoch(e)`` changes the shuffle; with ``shuffle=False`` rows come in file order.
    ``row_groups_read`` counts the row groups this process has read (for tests and logs).
    """

    def __init__(self, source, *, input_size, mean, std, interpolation: str = "bilinear",
                 shuffle: bool = True, seed: int = 0):
        self.files = shard_files(source)
        self.groups, self.meta = row_groups(self.files)
        self.input_size, self.mean, self.std = tuple(input_size), tuple(mean), tuple(std)
        self.interpolation = interpolation
        self.shuffle, self.seed, self.epoch = shuffle, seed, 0
        self.row_groups_read = 0
        self.skipped = 0  # undecodable images (cannot happen for shards kdata wrote)
        self.topk = self._topk()

    def _topk(self) -> int:
        for g in self.groups:
            if g.rows:
                col = pq.ParquetFile(g.path).read_row_group(g.index, columns=["teacher_topk_idx"]).column(0)
                return len(col[0].as_py())
        return 0

    def __len__(self) -> int:
        return sum(g.rows for g in self.groups)

    @property
    def temperature(self) -> float:
        """The scoring temperature of the stored top-k probabilities (shard metadata, default 1)."""
        return float(self.meta.get("temperature", 1.0))

    @property
    def class_names(self) -> list[str] | None:
        return self.meta.get("class_names")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _my_groups(self) -> tuple[list[RowGroup], np.random.Generator]:
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        order = np.arange(len(self.groups))
        rng = np.random.default_rng([self.seed, self.epoch])
        if self.shuffle:
            rng.shuffle(order)
        mine = [self.groups[i] for i in order[wid::nw]]
        return mine, np.random.default_rng([self.seed, self.epoch, wid, 1])

    def __iter__(self):
        mine, rng = self._my_groups()
        files: dict[str, pq.ParquetFile] = {}
        for g in mine:
            pf = files.get(g.path) or files.setdefault(g.path, pq.ParquetFile(g.path))
            cols = [c for c in COLUMNS if c in pf.schema_arrow.names]
            table = pf.read_row_group(g.index, columns=cols)
            self.row_groups_read += 1
            yield from self._rows(table, rng)

    def _rows(self, table: pa.Table, rng: np.random.Generator):
        n = table.num_rows
        if not n:
            return
        images = table.column("image").to_pylist()
        idx = _list2d(table, "teacher_topk_idx", np.int64)
        prob = _list2d(table, "teacher_topk_prob", np.float32)
        if "teacher_topk_logit" in table.column_names and table.column("teacher_topk_logit").null_count == 0:
            logit = _list2d(table, "teacher_topk_logit", np.float32)
        else:  # no raw logits stored: log-probabilities scaled by the scoring temperature
            logit = (np.log(np.clip(prob, 1e-12, None)) * self.temperature).astype(np.float32)
        if "label_idx" in table.column_names:
            labels = table.column("label_idx").fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
        else:
            labels = np.full(n, -1, dtype=np.int64)
        order = rng.permutation(n) if self.shuffle else np.arange(n)
        for i in order:
            try:
                x = decode_image(images[i], input_size=self.input_size, mean=self.mean, std=self.std,
                                 interpolation=self.interpolation)
            except Exception:
                self.skipped += 1
                continue
            yield (x, torch.from_numpy(idx[i]), torch.from_numpy(logit[i]), torch.from_numpy(prob[i]),
                   torch.tensor(labels[i]))


def _list2d(table: pa.Table, name: str, dtype) -> np.ndarray:
    col = table.column(name).combine_chunks()
    if col.null_count:
        raise KdataError(f"shard column '{name}' has nulls: not a curated shard kdata can train on")
    values = col.flatten().to_numpy(zero_copy_only=False).astype(dtype)  # a writable copy
    return values.reshape(len(col), -1)
