"""Curated shards for training, read one Parquet row group at a time.

Memory stays bounded by a row group (the writer caps them, 1,000 rows by default), whatever the
size of the dataset: the shards are never loaded whole. An epoch's order is one seeded order that
depends on nothing but the seed and the epoch: the row groups are shuffled, and the rows within
each row group are permuted by a generator of their own (seed, epoch, row group).

The trainer reads an epoch through ``ShardDataset.batches(B)``: a map-style dataset whose item i is
batch i, the rows [i·B, (i+1)·B) of that order, planned in the main process. DataLoader workers
only decode the batches they are handed and the loader returns them in order, so a batch holds the
same rows whatever ``--workers`` is, and every row is in exactly one batch of each epoch. Rows whose
image cannot be decoded are left out of their batch and counted in it (``Batch.undecodable``), so
the main process sees every one, and a problem in the soft labels travels back as ``Batch.error``.
Iterating the dataset itself yields single rows in the same order (row groups dealt round-robin to
a DataLoader's workers).

Each row group is checked as it is read (``check_group``): probabilities finite, in [0, 1] and
summing to at most 1 + 1e-3 per row, logits finite, top-k indices in [0, C), web labels in [-1, C),
equal-length lists; a bad one is one ``KdataError`` naming the file, row and column.

Each row is ``(image, topk_idx, topk_logit, topk_prob, label_idx)``: the normalised image
tensor (C, H, W), the teacher's stored top-k class indices (int64), raw logits and probabilities
(float32, the probabilities at the scoring temperature), and the web label as a class index
(-1 when unknown). The teacher is never run during training.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from kdata.dataset.manifest import MANIFEST
from kdata.dataset.schema import kdata_metadata, validate_shard
from kdata.core import arrow_lists
from kdata.core.errors import KdataError
from kdata.models.images import decode_image
from kdata.training.source import dataset_root, verify_source  # noqa: F401  (re-exported)

COLUMNS = ("image", "label_idx", "teacher_topk_idx", "teacher_topk_logit", "teacher_topk_prob")


PROB_SLACK = 1e-3  # a row's stored probabilities may sum to 1 + this (float32 rounding), no more


@dataclass(frozen=True)
class RowGroup:
    path: str
    index: int
    rows: int
    first: int = 0  # the file row of its first row


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

    files = shard_paths(p) if (p / MANIFEST).exists() else []
    if not files:
        files = sorted(f for f in p.rglob("*.parquet") if not f.name.startswith(".") and f.name != "decisions.parquet")
    if not files:
        raise KdataError(f"{p}: no curated shards found (no data/*.parquet)")
    return files


def shard_class_names(source) -> list[str] | None:
    """The class names the soft labels of ``source`` index: its manifest's, else its first shard's metadata."""
    root = dataset_root(source)
    try:
        manifest = json.loads((root / MANIFEST).read_text()) if root else {}
    except (OSError, ValueError):
        manifest = {}
    names = manifest.get("class_names") if isinstance(manifest, dict) else None
    if names is None:
        try:  # an unreadable source is reported, with its file, when the trainer opens it
            names = kdata_metadata(pq.read_schema(shard_files(source)[0])).get("class_names")
        except Exception:
            return None
    return list(names) if isinstance(names, list) else None


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
        meta = meta or kdata_metadata(schema, where=str(f))
        md, first = pf.metadata, 0
        for i in range(md.num_row_groups):
            groups.append(RowGroup(str(f), i, md.row_group(i).num_rows, first))
            first += md.row_group(i).num_rows
    return groups, meta


@dataclass
class GroupData:
    """One row group read and checked: image bytes and the soft labels as arrays (see ``read_group``)."""

    images: list
    idx: np.ndarray  # (n, k) int64
    logit: np.ndarray  # (n, k) float32
    prob: np.ndarray  # (n, k) float32
    labels: np.ndarray  # (n,) int64, -1 when unknown


class Batch(NamedTuple):
    """One training batch as a worker hands it back: the decoded rows, how many rows of the batch had
    an image that cannot be decoded (left out, ``first_undecodable`` names the first), and ``error``:
    a problem in the soft labels, raised by the main process (an exception raised in a worker would
    reach the user wrapped in the worker's traceback)."""

    x: torch.Tensor
    idx: torch.Tensor
    logit: torch.Tensor
    prob: torch.Tensor
    y: torch.Tensor
    undecodable: int = 0
    first_undecodable: str = ""
    error: str = ""
    pid: int = 0  # the process that decoded it


def read_group(pf: pq.ParquetFile, g: RowGroup, *, num_classes: int | None, temperature: float,
               images: bool = True) -> GroupData:
    """Row group ``g`` of ``pf``, its soft labels checked (``check_group``); a bad one is a ``KdataError``.
    ``images=False`` leaves the payloads unread (a check of the soft labels alone: ``images`` is empty)."""
    table = pf.read_row_group(g.index, columns=[c for c in COLUMNS if c in pf.schema_arrow.names
                                                and (images or c != "image")])
    n = table.num_rows
    if not n:
        empty = np.zeros((0, 0), np.float32)
        return GroupData([], empty.astype(np.int64), empty, empty, np.zeros(0, np.int64))
    idx, logit, prob, labels = checked_soft_labels(table, g, num_classes=num_classes)
    if logit is None:  # no raw logits stored: log-probabilities scaled by the scoring temperature
        logit = (np.log(np.clip(prob, 1e-12, None)) * temperature).astype(np.float32)
    return GroupData(table.column("image").to_pylist() if images else [], idx, logit, prob, labels)


def checked_soft_labels(table: pa.Table, g: RowGroup, *, num_classes: int | None):
    """(top-k indices, logits or None, probabilities, labels) of a row group's table, checked
    (``check_group``): the class soft labels of image rows and of text-classifier rows alike."""
    idx = list_matrix(table, "teacher_topk_idx", np.int64, g)
    prob = list_matrix(table, "teacher_topk_prob", np.float32, g)
    has_logit = "teacher_topk_logit" in table.column_names and table.column("teacher_topk_logit").null_count == 0
    logit = list_matrix(table, "teacher_topk_logit", np.float32, g) if has_logit else None
    if "label_idx" in table.column_names:
        labels = table.column("label_idx").fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    else:
        labels = np.full(table.num_rows, -1, dtype=np.int64)
    check_group(g, idx=idx, logit=logit, prob=prob, labels=labels, num_classes=num_classes)
    return idx, logit, prob, labels


def check_group(g: RowGroup, *, idx, logit, prob, labels, num_classes: int | None) -> None:
    """The soft labels of one row group are usable: one ``KdataError`` naming file, column and row if not."""
    c, has = (num_classes, f"the student has {num_classes} classes") if num_classes else (np.iinfo(np.int64).max, "")
    checks = [
        ("teacher_topk_prob", ~np.isfinite(prob).all(1), "holds non-finite probabilities"),
        ("teacher_topk_prob", ((prob < 0) | (prob > 1)).any(1), "holds probabilities outside [0, 1]"),
        ("teacher_topk_prob", prob.sum(1, dtype=np.float64) > 1 + PROB_SLACK,
         f"holds top-k probabilities that sum to more than 1 (+{PROB_SLACK}): not one softmax"),
        ("teacher_topk_idx", ((idx < 0) | (idx >= c)).any(1),
         f"holds class indices outside [0, {num_classes or 'C'})" + (f" ({has})" if has else "")),
        ("label_idx", (labels < -1) | (labels >= c),
         f"holds labels outside [-1, {num_classes or 'C'}) (-1: unknown" + (f"; {has})" if has else ")")),
    ]
    if logit is not None:
        checks.insert(3, ("teacher_topk_logit", ~np.isfinite(logit).all(1), "holds non-finite logits"))
    for name, bad, problem in checks:
        rows = np.flatnonzero(bad)
        if len(rows):
            more = f" and {len(rows) - 1} more in its row group" if len(rows) > 1 else ""
            raise KdataError(f"{g.path}: column '{name}' {problem} (row {g.first + int(rows[0])}{more})")
    ks = {"teacher_topk_idx": idx.shape[1], "teacher_topk_prob": prob.shape[1]}
    if logit is not None:
        ks["teacher_topk_logit"] = logit.shape[1]
    if len(set(ks.values())) > 1:
        raise KdataError(f"{g.path}: columns {', '.join(ks)} hold lists of different lengths "
                         f"({', '.join(map(str, ks.values()))}) in row group {g.index}")


def list_matrix(table: pa.Table, name: str, dtype, g: RowGroup) -> np.ndarray:
    """Column ``name`` of fixed-length lists as an (n, k) array (a writable copy); nulls or ragged lists are
    one line naming the shard and the row (``kdata.core.arrow_lists.list_matrix``)."""
    try:
        return arrow_lists.list_matrix(table, name, where=str(g.path), dtype=dtype, copy=True)
    except arrow_lists.ListColumnError as e:
        if e.problem == "ragged":
            raise KdataError(f"{g.path}: column '{name}' holds lists of different lengths ({e.width} at row "
                             f"{g.first}, {e.length} at row {g.first + e.row})") from None
        raise KdataError(f"{g.path}: column '{name}' has nulls (row {g.first + e.row}): not a curated shard "
                         "kdata can train on") from None


class ShardDataset(IterableDataset):
    """Stream (image, topk_idx, topk_logit, topk_prob, label_idx) from curated shards, row group by row group.

    ``set_epoch(e)`` changes the shuffle; with ``shuffle=False`` rows come in file order.
    ``batches(B)`` is the epoch as batches for the trainer (see the module docstring). ``num_classes``
    bounds the class indices the soft labels may hold (the student's logits). ``row_groups_read``
    counts the row groups this process has read, ``skipped`` the undecodable rows it streamed past.
    """

    def __init__(self, source, *, input_size, mean, std, interpolation: str = "bilinear",
                 shuffle: bool = True, seed: int = 0, num_classes: int | None = None):
        self.files = shard_files(source)
        names = pq.read_schema(self.files[0]).names
        if "teacher_topk_ids" in names or "image" not in names:  # per-token soft labels, or no images at all
            raise KdataError(f"{self.files[0]}: {'causal lm' if 'teacher_topk_ids' in names else 'text'} shards; "
                             "ShardDataset reads image shards (text shards train with kdata.training.text.train_text)")
        self.groups, self.meta = row_groups(self.files)
        self.input_size, self.mean, self.std = tuple(input_size), tuple(mean), tuple(std)
        self.interpolation = interpolation
        self.shuffle, self.seed, self.epoch = shuffle, seed, 0
        self.num_classes = num_classes
        self.row_groups_read = 0
        self.skipped = 0
        self.topk = self._topk()

    def _topk(self) -> int:
        for g in self.groups:
            if g.rows:
                table = pq.ParquetFile(g.path).read_row_group(g.index, columns=["teacher_topk_idx"])
                return list_matrix(table, "teacher_topk_idx", np.int64, g).shape[1]  # nulls: one line naming the shard
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

    def group_order(self, epoch: int | None = None) -> list[int]:
        """An epoch's order of the row groups (indices into ``groups``; default: the current epoch)."""
        order = np.arange(len(self.groups))
        if self.shuffle:
            np.random.default_rng([self.seed, self.epoch if epoch is None else epoch]).shuffle(order)
        return order.tolist()

    def row_order(self, gi: int, epoch: int | None = None) -> np.ndarray:
        """An epoch's order of the rows of row group ``gi``: its own generator, whoever reads it."""
        n, e = self.groups[gi].rows, self.epoch if epoch is None else epoch
        return np.random.default_rng([self.seed, e, gi, 1]).permutation(n) if self.shuffle else np.arange(n)

    def read(self, gi: int, files: dict) -> GroupData:
        g = self.groups[gi]
        pf = files.get(g.path) or files.setdefault(g.path, pq.ParquetFile(g.path))
        self.row_groups_read += 1
        return read_group(pf, g, num_classes=self.num_classes, temperature=self.temperature)

    def decode(self, data) -> torch.Tensor:
        return decode_image(data, input_size=self.input_size, mean=self.mean, std=self.std,
                            interpolation=self.interpolation)

    def __iter__(self):
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        files: dict[str, pq.ParquetFile] = {}
        for gi in self.group_order()[wid::nw]:
            d = self.read(gi, files)
            for i in self.row_order(gi):
                try:
                    x = self.decode(d.images[i])
                except Exception:
                    self.skipped += 1
                    continue
                yield (x, torch.from_numpy(d.idx[i]), torch.from_numpy(d.logit[i]), torch.from_numpy(d.prob[i]),
                       torch.tensor(d.labels[i]))

    def batches(self, batch_size: int) -> "EpochBatches":
        """The current epoch as ``ceil(len / batch_size)`` batches of consecutive rows of its order."""
        return EpochBatches(self, batch_size)

    def label_sample(self) -> tuple[str, list[tuple[int, str]]]:
        """(file, [(label_idx, label)]) of the first non-empty row group's rows that have both a web
        label string and a known label index: what the shards' class order can be checked against."""
        for g in self.groups:
            if not g.rows:
                continue
            names = pq.read_schema(g.path).names
            if "label" not in names or "label_idx" not in names:
                return g.path, []
            t = pq.ParquetFile(g.path).read_row_group(g.index, columns=["label", "label_idx"])
            pairs = zip(t.column("label_idx").to_pylist(), t.column("label").to_pylist())
            return g.path, [(int(i), s) for i, s in pairs if i is not None and i >= 0 and s is not None]
        return "", []


class EpochBatches(Dataset):
    """One epoch of a ``ShardDataset`` as a map-style dataset of batches: item i holds the rows
    [i·B, (i+1)·B) of the epoch's order, decoded (``Batch``); item ``(e, i)`` is batch i of epoch e,
    so persistent workers serve every epoch (``kdata.training.epoch_loader``). The plan depends on
    the seed and the epoch only; a worker reads the row groups its batches need, keeping the last two."""

    def __init__(self, ds: ShardDataset, batch_size: int):
        self.ds, self.batch_size = ds, int(batch_size)
        self._files: dict[str, pq.ParquetFile] = {}
        self.plan_epoch(ds.epoch)

    def plan_epoch(self, epoch: int) -> None:
        self.epoch, self.order = epoch, self.ds.group_order(epoch)
        self.starts = np.concatenate([[0], np.cumsum([self.ds.groups[g].rows for g in self.order], dtype=np.int64)])
        self._cache: dict[int, tuple[GroupData, np.ndarray]] = {}

    def __len__(self) -> int:
        return math.ceil(int(self.starts[-1]) / self.batch_size)

    def __getstate__(self) -> dict:  # to a worker: the plan, not this process's open files
        return {**self.__dict__, "_cache": {}, "_files": {}}

    def segments(self, i: int) -> list[tuple[int, int, int]]:
        """Batch ``i`` as (row group, start, stop) slices of the row groups' row orders."""
        a, b = i * self.batch_size, min((i + 1) * self.batch_size, int(self.starts[-1]))
        j, segs = int(np.searchsorted(self.starts, a, side="right")) - 1, []
        while a < b:
            end = min(b, int(self.starts[j + 1]))
            if end > a:
                segs.append((self.order[j], a - int(self.starts[j]), end - int(self.starts[j])))
                a = end
            j += 1
        return segs

    def _group(self, gi: int) -> tuple[GroupData, np.ndarray]:
        if gi not in self._cache:
            if len(self._cache) >= 2:
                self._cache.pop(next(iter(self._cache)))
            self._cache[gi] = (self.ds.read(gi, self._files), self.ds.row_order(gi, self.epoch))
        return self._cache[gi]

    def __getitem__(self, i) -> Batch:
        if isinstance(i, tuple):  # (epoch, batch)
            if i[0] != self.epoch:
                self.plan_epoch(i[0])
            i = i[1]
        xs, parts, bad, first = [], [], 0, ""
        try:
            for gi, lo, hi in self.segments(i):
                data, order = self._group(gi)
                keep = []
                for r in order[lo:hi]:
                    try:
                        xs.append(self.ds.decode(data.images[r]))
                    except Exception:
                        bad += 1
                        first = first or f"{self.ds.groups[gi].path} row {self.ds.groups[gi].first + int(r)}"
                        continue
                    keep.append(r)
                parts.append((data, np.asarray(keep, dtype=np.int64)))
        except KdataError as exc:
            return self._batch([], [], 0, "", error=str(exc))
        return self._batch(xs, parts, bad, first)

    def _batch(self, xs, parts, bad: int, first: str, error: str = "") -> Batch:
        k = self.ds.topk
        x = torch.stack(xs) if xs else torch.empty((0, *self.ds.input_size))

        def cat(name, dtype, width):
            arrs = [getattr(d, name)[rows] for d, rows in parts if len(rows)]
            return torch.from_numpy(np.concatenate(arrs) if arrs else np.zeros((0, *width), dtype))

        return Batch(x, cat("idx", np.int64, (k,)), cat("logit", np.float32, (k,)), cat("prob", np.float32, (k,)),
                     cat("labels", np.int64, ()), bad, first, error, os.getpid())
