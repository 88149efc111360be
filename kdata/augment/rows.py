"""HARD's generated rows as Arrow tables: shard-schema rows (accepted / excluded) and scores-schema rows.

Each generated row is named ``<parent>#hard<c>``, carries its parent's label, source and domain,
the teacher/student columns measured on its written PNG, and the ``HARD_COLUMNS``: the parameter
values it was rendered with, the KL before (parent) and after (generated row) and the critic score.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from kdata.augment.filtering import CriticOutcome
from kdata.augment.generation import Generated, ParentPass, Rescored
from kdata.dataset.schema import SCORES_OPTIONAL, SCORES_SCHEMA, SHARD_SCHEMA, conform

HARD_COLUMNS = {"hard_params": pa.list_(pa.float32()), "kl_before": pa.float32(), "kl_after": pa.float32(),
                "critic_score": pa.float32()}


def fixed_list(arr: np.ndarray, typ: pa.DataType) -> pa.Array:
    """A 2-D array as an Arrow list column of type ``typ`` (one row per array row)."""
    return pa.FixedSizeListArray.from_arrays(pa.array(arr.reshape(-1)), arr.shape[1]).cast(typ)


def final_copies(ids: list[str], src: np.ndarray, copy: np.ndarray, k: int, *, taken=None) -> np.ndarray:
    """The copy index ``c`` each generated row is named with (``<parent>#hard<c>``): its own, or, when that
    id is already in ``taken`` (an earlier augmentation), c + k, c + 2k, … (each id is used once)."""
    taken = set(taken or ())
    out = np.zeros(len(src), dtype=np.int64)
    for i, (p, c) in enumerate(zip(src, copy)):
        c = int(c)
        while (name := f"{ids[p]}#hard{c}") in taken:
            c += k
        taken.add(name)
        out[i] = c
    return out


def new_ids(ids: list[str], src: np.ndarray, copy: np.ndarray, k: int, *, taken=None) -> list[str]:
    """``<parent>#hard<c>``; an id already in ``taken`` (an earlier augmentation) moves to c + k, c + 2k, …"""
    return [f"{ids[p]}#hard{c}" for p, c in zip(src, final_copies(ids, src, copy, k, taken=taken))]


def scores_like(pp: ParentPass, g: Generated, r: Rescored) -> pa.Table:
    """The generated rows as a scores-schema table (what a trained critic reads)."""
    ids = pp.table.column("sample_id").to_pylist()
    cols = {"sample_id": pa.array([f"{ids[p]}#hard" for p in g.src], pa.string()),
            "label_idx": pa.array(r.label_idx, pa.int32())}
    for f in SCORES_SCHEMA:
        if f.name in r.stats:
            v = r.stats[f.name]
            cols[f.name] = fixed_list(v, f.type) if v.ndim == 2 else pa.array(v).cast(f.type)
    cols["teacher_logits"] = fixed_list(r.zt.cpu().numpy(), SCORES_OPTIONAL["teacher_logits"])
    cols["student_logits"] = fixed_list(r.zs.cpu().numpy(), SCORES_OPTIONAL["student_logits"])
    if r.feat is not None:
        cols["embedding"] = fixed_list(r.feat.numpy().astype(np.float16), SCORES_OPTIONAL["embedding"])
    return pa.table(cols)


def shard_rows(pp: ParentPass, g: Generated, r: Rescored, critic_score: np.ndarray) -> pa.Table:
    """Every generated row in the shard schema plus ``HARD_COLUMNS`` (``kind`` = synthetic), named
    ``<parent>#hard<c>`` with ``c`` its final copy index (``g.copy``, from ``final_copies``)."""
    par, src, n_gen = pp.table, g.src, g.n
    ids = par.column("sample_id").to_pylist()
    cols = {
        "sample_id": pa.array([f"{ids[p]}#hard{int(c)}" for p, c in zip(src, g.copy)], pa.string()),
        "image": pa.array(g.pngs, pa.binary()),
        "parent_id": pa.array([ids[p] for p in src], pa.string()),
        "kind": pa.array(["synthetic"] * n_gen, pa.string()),
        "label_idx": pa.array(r.label_idx, pa.int32()),
    }
    for name in ("label", "source", "domain"):
        if name in par.column_names:
            cols[name] = par.column(name).combine_chunks().take(pa.array(src)) if n_gen else pa.nulls(0, pa.string())
    if n_gen:
        for name, v in r.stats.items():
            if name in SHARD_SCHEMA.names:
                typ = SHARD_SCHEMA.field(name).type
                cols[name] = fixed_list(v, typ) if v.ndim == 2 else pa.array(v).cast(typ)
    cols["hard_params"] = fixed_list(r.values.numpy().astype(np.float32), HARD_COLUMNS["hard_params"]) if n_gen \
        else pa.array([], HARD_COLUMNS["hard_params"])
    cols["kl_before"] = pa.array(pp.kl[src].astype(np.float32), pa.float32())
    cols["kl_after"] = pa.array(r.stats["kl_ts"].astype(np.float32) if n_gen else np.zeros(0, np.float32),
                                pa.float32())
    cols["critic_score"] = pa.array(critic_score.astype(np.float32), pa.float32())
    return conform(pa.table(cols), SHARD_SCHEMA, extra=HARD_COLUMNS)


def split_rows(table: pa.Table, outcome: CriticOutcome, parent_pred: np.ndarray) -> tuple[pa.Table, pa.Table]:
    """(accepted rows, excluded rows with their ``reason`` and ``parent_teacher_pred``)."""
    accepted_mask = outcome.accepted
    accepted = table.filter(pa.array(accepted_mask))
    excluded = table.filter(pa.array(~accepted_mask))
    excluded = excluded.append_column("reason", pa.array(outcome.reason[~accepted_mask].tolist(), pa.string()))
    excluded = excluded.append_column("parent_teacher_pred", pa.array(parent_pred[~accepted_mask].astype(np.int32)))
    return accepted, excluded
