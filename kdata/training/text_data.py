"""Curated text shards as training batches, one Parquet row group at a time.

Causal-LM shards (they carry ``teacher_topk_ids``) give per row the teacher-tokenised
``input_ids`` and, per next-token position, the teacher's top-k token ids, their log-probs and
the leftover mass (docs/text.md). Classifier shards give the ``text`` and the teacher's stored
top-k class probabilities, like image shards, with the class names they index (``class_names``)
and the temperature they were scored at (``temperature``), which the trainer checks and uses.
Memory stays bounded by a row group: each epoch the row groups are shuffled with a seeded
generator and the rows within each group.
"""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from kdata.core.arrow_lists import list_matrix
from kdata.core.errors import KdataError
from kdata.core.warn import warn
from kdata.dataset.schema import kdata_metadata
from kdata.training.shard_dataset import RowGroup, shard_class_names, shard_files
from kdata.training.text_checks import LM_COLUMNS, check_classifier_group, check_lm_group

CLASSIFIER_COLUMNS = ("text", "teacher_topk_idx", "teacher_topk_prob")


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
        if not pf.metadata.num_row_groups:
            return "classifier" if "image" not in names else "image"
        first = pf.read_row_group(0, columns=[c for c in ("image", "text") if c in names])  # kdata's: both
    except Exception as exc:  # noqa: BLE001
        raise KdataError(f"{files[0]}: cannot read Parquet ({str(exc).splitlines()[0]})") from None
    n = first.num_rows
    has_text = first.column("text").null_count < n
    if "image" not in names:
        if n and not has_text:
            raise KdataError(f"{files[0]}: no 'image' column, and its 'text' column holds no text: neither image "
                             "nor text shards, nothing to train on (an image student needs the 'image' column)")
        return "classifier"
    text_only = n and first.column("image").null_count == n and has_text
    return "classifier" if text_only else "image"


class TextShards:
    """The row groups of curated text shards of one kind; ``batches(epoch=…)`` yields padded batches.
    Each row group's soft labels are checked as it is read (``kdata.training.text_checks``), token ids
    against ``vocab`` (the student's vocabulary size) when given."""

    def __init__(self, source, *, kind: str, batch_size: int, pad_id: int = 0, seed: int = 0,
                 max_length: int | None = None, vocab: int | None = None):
        self.source, self.files = source, shard_files(source)
        self.kind, self.batch_size, self.pad_id, self.seed = kind, batch_size, pad_id, seed
        self.max_length, self.vocab = max_length, vocab
        self._k: int | None = None  # the top-k width of the LM rows read so far
        self._checked: set[tuple[str, int]] = set()  # row groups whose soft labels passed
        need = LM_COLUMNS if kind == "causal_lm" else CLASSIFIER_COLUMNS
        self.columns = list(need) + (["label_idx", "teacher_topk_logit"] if kind == "classifier" else ["text"])
        self.groups: list[RowGroup] = []
        self.meta: dict = {}
        for f in self.files:
            try:
                pf = pq.ParquetFile(f)
            except Exception as exc:  # noqa: BLE001
                raise KdataError(f"{f}: cannot read Parquet ({str(exc).splitlines()[0]})") from None
            missing = [c for c in need if c not in pf.schema_arrow.names]
            if missing:
                raise KdataError(f"{f}: not {kind} text shards: missing column(s) {', '.join(missing)}")
            self.meta = self.meta or kdata_metadata(pf.schema_arrow, where=str(f))
            first = 0
            for i in range(pf.metadata.num_row_groups):
                rows = pf.metadata.row_group(i).num_rows
                self.groups.append(RowGroup(str(f), i, rows, first))
                first += rows
        self.columns = [c for c in self.columns if c in pq.read_schema(self.files[0]).names]
        names = self.class_names if kind == "classifier" else None
        self._num_classes = len(names) if names else None  # what the stored class indices must stay below

    def __len__(self) -> int:
        return sum(g.rows for g in self.groups)

    @property
    def temperature(self) -> float:
        """The scoring temperature of the stored class probabilities (shard metadata, default 1)."""
        return float(self.meta.get("temperature", 1.0))

    @property
    def class_names(self) -> list[str] | None:
        """The class names the stored class indices refer to: the shards' metadata, else the dataset's
        manifest; None when neither says."""
        names = self.meta.get("class_names")
        if names is None:
            names = shard_class_names(self.source)
        return [str(n) for n in names] if isinstance(names, list) else None

    def steps_per_epoch(self) -> int:
        return -(-len(self) // self.batch_size)

    def batches(self, *, epoch: int):
        """Batches of one epoch (every row once): dicts of tensors, see ``lm_batch`` / ``classifier_batch``.
        A shard is open only while one of its row groups is read (no handle per shard held across the
        epoch); rows stay in Arrow until a batch is gathered, so no per-row Python objects are made."""
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.groups))
        pending: list[pa.Table] = []  # row-shuffled pieces of groups, oldest first
        waiting = 0
        for gi in order:
            g = self.groups[int(gi)]
            with pq.ParquetFile(g.path) as pf:  # one open file at a time, however many shards
                table = pf.read_row_group(g.index, columns=self.columns)
            self._check(table, g)
            pending.append(table.take(rng.permutation(table.num_rows)))
            waiting += table.num_rows
            while waiting >= self.batch_size:
                batch, pending = _split(pending, self.batch_size)
                waiting -= self.batch_size
                yield self._collate(batch)
        if waiting:
            yield self._collate(_concat(pending))

    def _check(self, table: pa.Table, g: RowGroup) -> None:
        """A row group's soft labels, the first time this object reads it (later epochs read the same bytes)."""
        if (g.path, g.index) in self._checked:
            return
        if self.kind == "causal_lm":
            self._k = check_lm_group(table, g, k=self._k, vocab=self.vocab)
        else:
            check_classifier_group(table, g, num_classes=self._num_classes)
        self._checked.add((g.path, g.index))

    def _collate(self, table: pa.Table) -> dict:
        if self.kind == "causal_lm":
            return lm_batch(table, pad_id=self.pad_id, max_length=self.max_length)
        return classifier_batch(table, score_temperature=self.temperature)


def _concat(pieces: list[pa.Table]) -> pa.Table:
    """One table of the pieces; shards whose column types differ (float16 vs float32 log-probs) are
    promoted to a common type rather than refused."""
    return pieces[0] if len(pieces) == 1 else pa.concat_tables(pieces, promote_options="permissive")


def _split(pieces: list[pa.Table], n: int) -> tuple[pa.Table, list[pa.Table]]:
    """The first ``n`` rows of the pieces as one table, and the pieces left after them."""
    head, rest, need = [], list(pieces), n
    while need:
        t = rest.pop(0)
        head.append(t.slice(0, need))
        if t.num_rows > need:
            rest.insert(0, t.slice(need))
        need -= head[-1].num_rows
    return _concat(head), rest


def _lists(table: pa.Table, name: str) -> pa.ListArray:
    """Column ``name`` as one list array (its row groups passed ``check_lm_group``: no nulls, one k)."""
    return table.column(name).combine_chunks()


def _lengths(col: pa.ListArray) -> np.ndarray:
    return np.diff(col.offsets.to_numpy()).astype(np.int64)


def _at(col: pa.ListArray, rows: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Index into ``col.values`` of entry ``pos`` of list ``rows`` (the list offsets, vectorised)."""
    return col.offsets.to_numpy()[rows].astype(np.int64) + pos


def _topk(col: pa.ListArray, rows: np.ndarray, pos: np.ndarray, k: int) -> np.ndarray:
    """The (P, k) top-k values at positions ``pos`` of ``rows`` (every inner list holds k: checked)."""
    at, inner = _at(col, rows, pos), col.values
    start = inner.offsets.to_numpy()[at].astype(np.int64)
    return inner.values.to_numpy(zero_copy_only=False)[start[:, None] + np.arange(k)]


def lm_batch(table: pa.Table, *, pad_id: int, max_length: int | None = None) -> dict:
    """Pad rows to the longest: ``input_ids``/``attention_mask`` (B, L); per next-token position
    ``topk_ids`` (B, L−1, k), ``topk_logprobs`` (B, L−1, k), ``rest_mass`` and ``valid`` (B, L−1).
    Built from the Arrow list offsets and flat values (no per-row Python lists); unused positions
    hold ``pad_id`` / id 0 / log-prob −30 / rest mass 0. The rows are ones ``check_lm_group`` passed."""
    cols = {c: _lists(table, c) for c in LM_COLUMNS}
    inp, tk, b = cols["input_ids"], cols["teacher_topk_ids"], table.num_rows
    n = _lengths(inp)
    if max_length:
        n = np.minimum(n, max_length)
    length = max(2, int(n.max()))
    m = np.clip(np.minimum(n - 1, _lengths(tk)), 0, None)  # next-token positions with soft labels
    first = np.flatnonzero(_lengths(tk))  # k: the first row that has soft labels
    k = int(_lengths(tk.values)[tk.offsets.to_numpy()[first[0]]]) if len(first) else 1
    mask = np.arange(length)[None, :] < n[:, None]
    ids = np.full((b, length), pad_id, dtype=np.int64)
    ids[mask] = inp.values.to_numpy(zero_copy_only=False)[_at(inp, *np.nonzero(mask))]
    valid = np.arange(length - 1)[None, :] < m[:, None]
    rows, pos = np.nonzero(valid)
    tk_ids = np.zeros((b, length - 1, k), dtype=np.int64)
    tk_lp = np.full((b, length - 1, k), -30.0, dtype=np.float32)
    rest = np.zeros((b, length - 1), dtype=np.float32)
    tk_ids[rows, pos] = _topk(tk, rows, pos, k)
    tk_lp[rows, pos] = _topk(cols["teacher_topk_logprobs"], rows, pos, k)
    rm = cols["teacher_rest_mass"]
    rest[rows, pos] = rm.values.to_numpy(zero_copy_only=False)[_at(rm, rows, pos)]
    return {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask.astype(np.int64)),
            "topk_ids": torch.from_numpy(tk_ids), "topk_logprobs": torch.from_numpy(tk_lp),
            "rest_mass": torch.from_numpy(rest), "valid": torch.from_numpy(valid)}


def classifier_batch(table: pa.Table, *, score_temperature: float = 1.0) -> dict:
    """Texts, the teacher's top-k class indices, logits and probabilities (B, k), the web label index
    (−1 unknown). Without stored logits the log-probabilities scaled by the scoring temperature stand
    in (T_s · log p differs from the raw logits by a constant), as for image shards. Built from the
    Arrow lists' flat values (no per-row Python lists); the rows are ones ``check_classifier_group`` passed."""
    names, n = table.column_names, table.num_rows

    def matrix(name: str, dtype) -> torch.Tensor:
        return torch.from_numpy(list_matrix(table, name, where="text classifier shards", dtype=dtype, copy=True))

    prob = matrix("teacher_topk_prob", np.float32)
    if "teacher_topk_logit" in names and table.column("teacher_topk_logit").null_count == 0:
        logit = matrix("teacher_topk_logit", np.float32)
    else:
        logit = prob.clamp_min(1e-12).log()
        if score_temperature != 1.0:
            logit = logit * score_temperature
    labels = (table.column("label_idx").fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
              if "label_idx" in names else np.full(n, -1, dtype=np.int64))
    return {"text": [t or "" for t in table.column("text").to_pylist()] if "text" in names else [""] * n,
            "topk_idx": matrix("teacher_topk_idx", np.int64),
            "topk_prob": prob, "topk_logit": logit, "labels": torch.from_numpy(labels)}


def eval_texts(spec: str, *, max_rows: int = 100_000) -> tuple[list[str], list[str | None]]:
    """Texts (and labels) of an evaluation set: a pool spec (``builtin:text-test``, Parquet, JSONL…)
    read through ``open_pool``; rows without text are skipped, and their number said in a note (``kdata.core.warn``)."""
    from kdata.pools.spec import open_pool

    texts: list[str] = []
    labels: list[str | None] = []
    skipped = 0
    for unit in open_pool(spec, what="evaluation set").units:
        t: pa.Table = unit.read()
        if "text" not in t.column_names or t.column("text").null_count == t.num_rows:
            raise KdataError(f"{spec}: evaluation set has no text")
        lab = t.column("label").to_pylist() if "label" in t.column_names else [None] * t.num_rows
        for x, y in zip(t.column("text").to_pylist(), lab):
            if x and isinstance(x, str) and x.strip():
                texts.append(x)
                labels.append(y)
            else:
                skipped += 1
        if len(texts) > max_rows:
            raise KdataError(f"{spec}: evaluation set larger than {max_rows} texts")
    if not texts:
        raise KdataError(f"{spec}: evaluation set has no text")
    if skipped:
        warn(f"{spec}: {skipped} evaluation row(s) without text skipped; evaluating on {len(texts)}", note=True)
    return texts, labels
