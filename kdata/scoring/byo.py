"""Bring your own predictions: ``kdata select --scores FILE.parquet`` instead of models.

For text and LLM distillation, or any model kdata cannot run, give the predictions as Parquet,
one row per sample:

* ``sample_id`` (string, unique), and either
* ``teacher_logits`` and ``student_logits``: lists of C numbers per row (same C everywhere), or
* top-k probabilities: ``teacher_topk_idx``/``teacher_topk_prob`` and
  ``student_topk_idx``/``student_topk_prob`` (lists of k class indices / probabilities; the
  remaining mass is spread evenly over the other classes; C = the largest index + 1, or the
  ``num_classes=`` argument), or
* only ``teacher_logprob`` and ``reference_logprob`` (numbers, or lists = one per token) for
  MiniPLM on text (then every row gets one trivial pseudo-class, so only ``miniplm`` and
  ``random`` rank meaningfully).

Optional columns ride along to the methods: ``label_idx`` (int, −1 unknown), ``domain`` (DDK),
``teacher_loss``/``student_loss`` (DDK with LLM losses), ``embedding`` (critic),
``teacher_logprob``/``reference_logprob`` (MiniPLM).

Bad input — NaN/inf values, ragged lists, mismatched class counts, nulls, duplicate ids — is one
clear error naming the file, the column and the first bad row. The disagreement statistics are
computed with the same function as model scoring (``kdata.core.stats.disagreement``), streaming the
logits in batches of ≈ 2²⁴ / C rows, so memory is O(row group + batch × C + N × k) for any N.

Payload: the curated shards carry the pool's payload (image/text…) when ``--pool`` is given (rows
matched by ``sample_id``; a kept id missing from the pool is an error); without ``--pool`` the
shards carry the ids, the teacher's soft labels and the scores only.
"""

from __future__ import annotations

import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from kdata.core.atomic import sha256_file
from kdata.core.exact_probs import keeps_logits
from kdata.core.warn import warn
from kdata.dataset.schema import SCORES_OPTIONAL, SCORES_SCHEMA, kdata_metadata
from kdata.core.errors import KdataError
from kdata.core.stats import with_temperature
from kdata.scoring.byo_columns import (PASSTHROUGH, check_list_column, check_token_lengths, fail_at, label_column,
                                       passthrough_column)

LOGITS = ("teacher_logits", "student_logits")


@dataclass
class ByoModel:
    """What the pipeline needs to know about a model that lives elsewhere."""

    spec: str
    num_classes: int
    class_names: list[str]
    checksum: str
    extra: dict = field(default_factory=dict)

    def describe(self) -> dict:
        return {"spec": self.spec, "checksum": self.checksum, "num_classes": self.num_classes,
                "source": "bring-your-own predictions", **self.extra}


MAX_CLASSES = 2**20  # above every real label set or vocabulary (≈ 262k); a dense row is then 4 MiB


def topk_class_count(where: str, ids: pa.Array, idx: dict[str, np.ndarray], *, declared: int | None,
                     meta: dict) -> int:
    """The class count C of top-k predictions, checked before anything dense (N × C) is allocated.

    C is declared (``num_classes=``, else the file's ``kdata`` metadata: ``num_classes`` or the
    length of ``class_names``) or inferred as the largest index + 1. An index ≥ C, or a C above
    ``MAX_CLASSES`` (an index of 2·10⁹ would otherwise ask for a dense rebuild of 8 GB per row), is
    one line naming the file, the column and the row."""
    names = meta.get("class_names")
    declared = declared or meta.get("num_classes") or (len(names) if isinstance(names, list) and names else None)
    if declared is not None:
        if isinstance(declared, bool) or not isinstance(declared, int) or not 1 <= declared <= MAX_CLASSES:
            raise KdataError(f"{where}: declared num_classes {declared!r} must be a whole number in 1..{MAX_CLASSES:,}")
        limit, why = declared, f"≥ num_classes {declared}"
    else:
        limit, why = MAX_CLASSES, (f"is out of range: with no num_classes in the file's kdata metadata, C would be "
                                   f"the largest index + 1, above {MAX_CLASSES:,} classes")
    for name, v in idx.items():
        bad = np.flatnonzero((v >= limit).any(1))
        if len(bad):
            r = int(bad[0])
            fail_at(where, name, r, ids, f"class index {int(v[r].max())} {why}")
    return int(declared) if declared is not None else int(max(v.max() for v in idx.values()) + 1)


def read_topk(table: pa.Table, *, where: str, ids: pa.Array, num_classes: int | None,
              meta: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """Validated top-k predictions: (teacher idx, teacher prob, student idx, student prob, C)."""
    names = table.column_names
    need = ("teacher_topk_idx", "teacher_topk_prob", "student_topk_idx", "student_topk_prob")
    for c in need:
        if c not in names:
            raise KdataError(f"{where}: top-k predictions need columns {', '.join(need)}; '{c}' is missing")
    ti = check_list_column(table, "teacher_topk_idx", where=where, integer=True)
    tp = check_list_column(table, "teacher_topk_prob", where=where, width=ti.shape[1], width_of="teacher_topk_idx")
    si = check_list_column(table, "student_topk_idx", where=where, integer=True)
    sp = check_list_column(table, "student_topk_prob", where=where, width=si.shape[1], width_of="student_topk_idx")
    for name, v in (("teacher_topk_prob", tp), ("student_topk_prob", sp)):
        bad = np.flatnonzero((v < 0).any(1) | (v > 1).any(1) | (v.sum(1) > 1 + 1e-3))
        if len(bad):
            fail_at(where, name, int(bad[0]), ids, "probabilities must lie in [0, 1] and sum to at most 1")
    for name, v in (("teacher_topk_idx", ti), ("student_topk_idx", si)):
        bad = np.flatnonzero((v < 0).any(1))
        if len(bad):
            fail_at(where, name, int(bad[0]), ids, "negative class index")
        srt = np.sort(v, axis=1)
        bad = np.flatnonzero((srt[:, 1:] == srt[:, :-1]).any(1))
        if len(bad):  # one class named twice: its probabilities would be overwritten, not added
            row = np.sort(v[bad[0]])
            fail_at(where, name, int(bad[0]), ids, f"class {int(row[1:][row[1:] == row[:-1]][0])} appears twice in the row")
    C = topk_class_count(where, ids, {"teacher_topk_idx": ti, "student_topk_idx": si},
                         declared=num_classes, meta=meta)
    return ti, tp, si, sp, C


def _topk_logprobs(idx: np.ndarray, val: np.ndarray, num_classes: int):
    """Dense float32 log-probabilities from top-k (the rest of the mass spread evenly over the other
    classes; probabilities floored at 1e-12): one fill and one scatter per batch."""
    import torch

    v = torch.tensor(val, dtype=torch.float32)  # copies: Arrow's buffers are read-only
    rest = (1 - v.sum(1, keepdim=True)).clamp_min(0) / max(num_classes - idx.shape[1], 1)
    out = torch.log(rest.clamp_min(1e-12)).expand(-1, num_classes).contiguous()
    return out.scatter_(1, torch.tensor(idx, dtype=torch.int64), torch.log(v.clamp_min(1e-12)))


def _logit_batches(pfile, where: str, ids: pa.Array, C: int):
    """(first row, teacher, student) float32 tensors, batch by batch (``stats.chunk_rows(C)`` rows,
    the compiled kernel's chunk), each batch validated: memory stays O(row group + batch × C)
    however many rows the file has."""
    import torch

    from kdata.core.stats import chunk_rows

    offset = 0
    for batch in pfile.iter_batches(batch_size=chunk_rows(C), columns=list(LOGITS)):
        b = pa.Table.from_batches([batch])
        tl = check_list_column(b, "teacher_logits", where=where, width=C, offset=offset, ids=ids)
        sl = check_list_column(b, "student_logits", where=where, width=C, width_of="teacher_logits",
                               offset=offset, ids=ids)
        with warnings.catch_warnings():  # read-only Arrow buffers; nothing writes to them
            warnings.simplefilter("ignore", UserWarning)
            t, s = torch.from_numpy(tl), torch.from_numpy(sl)
        if offset == 0:
            _warn_if_probabilities(where, tl, sl)
        yield offset, t, s
        offset += b.num_rows


def _warn_if_probabilities(where: str, *matrices: np.ndarray) -> None:
    """One warning when the "logits" of the first batch look like probabilities (every row in [0, 1],
    summing to 1): a softmax of them is nearly uniform, so the soft labels written would be."""
    for name, m in zip(LOGITS, matrices):
        if m.size and m.min() >= 0 and m.max() <= 1 and np.allclose(m.sum(1), 1, atol=1e-3):
            warn(f"{where}: column '{name}' looks like probabilities (rows in [0, 1] summing "
                 "to 1), but it is read as logits; give log-probabilities (or the top-k columns) instead")
            return


def _topk_batches(ti, tp, si, sp, C: int):
    """Dense log-probabilities rebuilt from top-k (the rest spread evenly), batch by batch
    (``stats.chunk_rows(C)`` rows, as for logits)."""
    from kdata.core.stats import chunk_rows

    rows = chunk_rows(C)
    for i in range(0, len(ti), rows):
        yield (i, _topk_logprobs(ti[i:i + rows], tp[i:i + rows], C), _topk_logprobs(si[i:i + rows], sp[i:i + rows], C))
        # stored top-k is taken from the given probabilities at T = 1


def _one_class_columns(n: int) -> dict[str, pa.Array]:
    """Score columns of one trivial pseudo-class (``teacher_logprob``/``reference_logprob`` files)."""
    one = {"teacher_conf": 1.0, "student_conf": 1.0, "teacher_margin": 1.0, "student_margin": 1.0,
           "teacher_entropy": 0.0, "student_entropy": 0.0, "kl_ts": 0.0, "kl_st": 0.0,
           "teacher_label_prob": float("nan")}
    cols = {name: pa.array(np.full(n, v, np.float32)) for name, v in one.items()}
    cols["teacher_pred"] = cols["student_pred"] = pa.array(np.zeros(n, np.int32))
    cols["agree"] = pa.array(np.ones(n, bool))
    offsets = pa.array(np.arange(n + 1, dtype=np.int32))  # one item per row, built in Arrow (no Python lists)
    for name in ("teacher_topk_idx", "student_topk_idx"):
        cols[name] = pa.ListArray.from_arrays(offsets, pa.array(np.zeros(n, np.int32)))
    for name in ("teacher_topk_prob", "student_topk_prob", "teacher_topk_logit"):
        cols[name] = pa.ListArray.from_arrays(offsets, pa.array(np.full(n, 1.0 if "prob" in name else 0.0, np.float32)))
    return cols


def _statistics_columns(batches, label: np.ndarray, *, C: int, n: int, temperature: float, topk: int,
                        keep_logits: bool) -> dict[str, pa.Array]:
    """The disagreement statistics of streamed (row offset, teacher, student) logit batches."""
    import torch

    from kdata.core.exact_probs import exact_columns
    from kdata.core.stats import choose_backend, disagreement
    from kdata.scoring.score import score_columns

    backend = choose_backend("cpu", C, n * C)  # by the whole file: a compile pays off on large ones
    parts: dict[str, list] = {}
    with torch.inference_mode():
        for i, t, s in batches:
            li = torch.tensor(label[i:i + len(t)])
            st = disagreement(t, s, temperature=temperature, topk=topk, label_idx=li, backend=backend)
            if keep_logits:
                st["teacher_logits"], st["student_logits"] = t, s
            else:
                st.update(exact_columns(t, s, temperature=temperature, label_idx=li))
            for k, v in st.items():
                parts.setdefault(k, []).append(v.numpy())
    return score_columns(parts)


def load_scores(path: str, *, topk: int = 5, temperature: float = 1.0, num_classes: int | None = None,
                labels=None) -> tuple[pa.Table, int, list[str]]:
    """Read and validate a bring-your-own predictions file; return (scores table, C, class names).
    ``labels(ids, class_names, declared, C, file_label)`` (``--pool``'s web labels) returns the
    ``(label_idx, class_names)`` the statistics read (``kdata.pipeline.byo_labels``)."""
    import pyarrow.parquet as pq

    where = str(path)
    if not Path(path).exists():
        raise KdataError(f"{where}: no such file")
    try:  # the full logits (N × C, maybe 10M × 1000) are streamed in batches further down
        pfile = pq.ParquetFile(path, pre_buffer=False)  # pre-buffering keeps every row group read
        names = pfile.schema_arrow.names
        table = pfile.read(columns=[c for c in names if c not in LOGITS])
    except Exception as exc:  # not Parquet, truncated…
        raise KdataError(f"{where}: not a readable Parquet file ({str(exc).splitlines()[0]})") from None
    if "sample_id" not in names:
        raise KdataError(f"{where}: missing required column 'sample_id' (have: {', '.join(names)})")
    ids = table.column("sample_id").combine_chunks()
    if not pa.types.is_string(ids.type):  # large_string (pandas 3's default), ints…: one id type downstream
        ids = ids.cast(pa.string())
        table = table.set_column(names.index("sample_id"), "sample_id", ids)
    if ids.null_count:
        fail_at(where, "sample_id", int(np.flatnonzero(ids.is_null().to_numpy(zero_copy_only=False))[0]), None, "null id")
    if table.num_rows == 0:
        raise KdataError(f"{where}: no rows")
    if len(pc.unique(ids)) != len(ids):
        vc = pc.value_counts(ids).to_pylist()
        dup = next(v["values"] for v in vc if v["counts"] > 1)
        raise KdataError(f"{where}: column 'sample_id': '{dup}' occurs more than once; ids must be unique")
    meta = kdata_metadata(table.schema, where=where)  # not a JSON object: one line naming the file
    n = table.num_rows
    if "teacher_logits" in names or "student_logits" in names:
        for c in ("teacher_logits", "student_logits"):
            if c not in names:
                raise KdataError(f"{where}: has {'teacher_logits' if c == 'student_logits' else 'student_logits'} "
                                 f"but no '{c}'")
        first = next(pfile.iter_batches(batch_size=1, columns=["sample_id", "teacher_logits"]))
        C = len(check_list_column(pa.Table.from_batches([first]), "teacher_logits", where=where)[0])
        mode = "logits"
    elif "teacher_topk_idx" in names:
        ti, tp, si, sp, C = read_topk(table, where=where, ids=ids, num_classes=num_classes, meta=meta)
        mode = "topk"
        if topk > ti.shape[1] and C > ti.shape[1]:
            warn(f"{where}: --topk {topk} is above the {ti.shape[1]} classes per row the file "
                 "gives; the soft labels past them are the rest of the mass spread evenly")
    elif "teacher_logprob" in names and "reference_logprob" in names:
        C, mode = 1, "logprob"  # no classes: one pseudo-class, so class-based code stays well-defined
    else:
        raise KdataError(f"{where}: needs teacher_logits and student_logits (lists), or teacher_topk_idx/"
                         "teacher_topk_prob and student_topk_idx/student_topk_prob, or teacher_logprob and "
                         "reference_logprob")
    declared = _declared_class_names(meta, where=where, C=C, mode=mode)
    class_names = list(meta["class_names"]) if declared else [str(i) for i in range(C)]

    label = np.full(n, -1, dtype=np.int32)
    if "label_idx" in names:
        label = label_column(table, where=where, ids=ids, num_classes=None if mode == "logprob" else C)
    if labels is not None and mode != "logprob":
        label, class_names = labels(ids, class_names, declared, C, label if "label_idx" in names else None)
    cols: dict[str, pa.Array] = {"sample_id": ids, "label_idx": pa.array(label, pa.int32())}
    if mode == "logprob":  # trivial one-class predictions; only miniplm (and random) say anything here
        cols.update(_one_class_columns(n))
    else:
        batches = (_logit_batches(pfile, where, ids, C) if mode == "logits" else _topk_batches(ti, tp, si, sp, C))
        cols.update(_statistics_columns(batches, label, C=C, n=n, temperature=temperature, topk=topk,
                                        keep_logits=mode == "logits" and keeps_logits("auto", C)))
    out = pa.table({k: cols[k] for k in [f.name for f in SCORES_SCHEMA] + [k for k in SCORES_OPTIONAL if k in cols]})
    if "embedding" in names and "embedding" not in out.column_names:
        emb = check_list_column(table, "embedding", where=where)
        out = out.append_column("embedding", pa.FixedSizeListArray.from_arrays(
            pa.array(emb.reshape(-1).astype(np.float16)), emb.shape[1]).cast(SCORES_OPTIONAL["embedding"]))
    for name, typ in PASSTHROUGH.items():
        if name in names:
            out = out.append_column(name, passthrough_column(table, name, typ, where=where, ids=ids))
    if "teacher_logprob" in names and "reference_logprob" in names:
        check_token_lengths(table, where=where, ids=ids)
        _note_sums(table, where=where)
    return with_temperature(out, temperature), C, class_names  # the statistics' temperature, for select


def _declared_class_names(meta: dict, *, where: str, C: int, mode: str) -> bool:
    """Whether the file's metadata declares ``class_names`` (checked: a list of C distinct strings,
    else one line naming the file; never dropped silently for ``"0".."C-1"``). A ``logprob`` file has
    one pseudo-class: names given there are checked as names but not counted against it."""
    names = meta.get("class_names")
    if names is None:
        return False
    what = f"{where}: the 'kdata' metadata's class_names"
    if not isinstance(names, list):
        kind = {str: "string", dict: "object", bool: "boolean"}.get(type(names), "number")
        raise KdataError(f"{what} must be a list of class names, not a JSON {kind} ({names!r:.60})")
    bad = next((v for v in names if not isinstance(v, str)), None)
    if bad is not None or any(v == "" for v in names):
        raise KdataError(f"{what} must be non-empty strings; got {bad!r:.60}" if bad is not None
                         else f"{what} must be non-empty strings; got an empty name")
    seen: set[str] = set()
    dup = next((v for v in names if v in seen or seen.add(v)), None)
    if dup is not None:
        raise KdataError(f"{what} list '{dup}' more than once; class names must be distinct")
    if mode == "logprob":  # no classes to count: names for its one pseudo-class are kept, others not used
        return len(names) == C
    if len(names) != C:
        raise KdataError(f"{what} list {len(names)} name(s), but the predictions have {C} classes")
    return True


SUM_LIKE = -20.0  # a per-token mean log-probability below this is rare: the column more likely holds sums


def _note_sums(table: pa.Table, *, where: str) -> None:
    """One warning when a number-per-row log-probability column looks like per-sequence sums: MiniPLM
    compares per-token means, and a sum ranks mostly by length."""
    for name in ("teacher_logprob", "reference_logprob"):
        col = table.column(name)
        if pa.types.is_list(col.type) or pa.types.is_large_list(col.type) or not len(col):
            continue
        med = float(np.median(col.to_numpy(zero_copy_only=False).astype(np.float64)))
        if med < SUM_LIKE:
            warn(f"{where}: column '{name}' has median {med:.1f}; MiniPLM compares per-token mean "
                 "log-probabilities, and per-sequence sums rank mostly by length (divide by the token count, or "
                 "give one value per token as a list)")
            return


def load_with_checksum(path: str, *, topk: int, temperature: float, labels=None) -> tuple[pa.Table, int, list[str], str]:
    """``load_scores`` plus the file's sha256: (scores, C, class_names, digest).

    The checksum (5 s for an 8 GB file) runs beside the load, since hashlib releases the GIL; a bad
    file fails at once, not after hashing all of it.
    """
    stop = threading.Event()
    with ThreadPoolExecutor(1, thread_name_prefix="kdata-sha256") as ex:
        pending = ex.submit(sha256_file, path, stop=stop) if Path(path).is_file() else None
        try:
            scores, C, class_names = load_scores(path, topk=topk, temperature=temperature, labels=labels)
        except BaseException:
            stop.set()
            raise
        digest = pending.result() if pending else sha256_file(path)
    return scores, C, class_names, digest
