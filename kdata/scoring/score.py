"""Score a pool with teacher and student: batched inference, disagreement statistics, caching.

Decoding runs in DataLoader worker processes (``num_workers``) so the models never wait on image
decode; teacher and student share one decode per batch (one tensor per distinct preprocessing).
Undecodable samples are quarantined with their error. Each pool unit's scores are cached under
``$KDATA_CACHE/scores`` keyed by (unit fingerprint, model checksums, scoring config, kdata
version): a rerun after a crash, or over a pool that only grew, scores only what is new.
"""

from __future__ import annotations

import hashlib
import json
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from kdata.core.version import __version__
from kdata.core.atomic import read_parquet, write_json, write_parquet
from kdata.core.lock import exclusive
from kdata.dataset.schema import SCORES_OPTIONAL, SCORES_SCHEMA, read_errors
from kdata.core.errors import KdataError
from kdata.models.spec import Model
from kdata.core.paths import cache_dir
from kdata.pools.spec import Pool, PoolUnit
from kdata.core.stats import disagreement
from kdata.models.images import DEFAULT_MAX_PIXELS, iter_decoded

DECODE_VERSION = 2  # bump when decoding changes what a model sees (invalidates cached scores)


@dataclass(frozen=True)
class ScoreConfig:
    batch_size: int = 256
    topk: int = 5
    temperature: float = 1.0
    num_workers: int = 0
    embeddings: bool = True  # keep the teacher's penultimate features (float16) for dedup/critic
    keep_logits: str = "auto"  # "auto" (when C ≤ 128), "yes", "no"
    max_pixels: int = DEFAULT_MAX_PIXELS  # larger images are quarantined before decoding (--max-pixels)

    def key(self) -> dict:
        d = asdict(self)
        d.pop("batch_size")
        d.pop("num_workers")
        return d


def check_models(teacher: Model, student: Model) -> None:
    if teacher.num_classes != student.num_classes:
        raise KdataError(f"class-count mismatch: teacher {teacher.spec} has {teacher.num_classes} classes, "
                         f"student {student.spec} has {student.num_classes}")
    if teacher.class_names != student.class_names and set(teacher.class_names) == set(student.class_names):
        raise KdataError(f"class order differs: teacher {teacher.spec} and student {student.spec} list the same "
                         "class names in a different order (logit i must mean the same class in both)")


def label_indices(labels: pa.Array, class_names: list[str]) -> np.ndarray:
    lookup = {name: i for i, name in enumerate(class_names)}
    return np.array([lookup.get(v, -1) if v is not None else -1 for v in labels.to_pylist()], dtype=np.int32)


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def score_columns(chunks: dict[str, list[np.ndarray]]) -> dict[str, pa.Array]:
    """Per-batch numpy results → Arrow columns typed as the scores schema (2-D → fixed-size lists)."""
    types = {f.name: f.type for f in SCORES_SCHEMA}
    types.update(SCORES_OPTIONAL)
    cols = {}
    for k, parts in chunks.items():
        arr = np.concatenate(parts)
        if arr.ndim == 2:
            cols[k] = pa.FixedSizeListArray.from_arrays(pa.array(arr.reshape(-1)), arr.shape[1]).cast(types[k])
        else:
            cols[k] = pa.array(arr).cast(types[k])
    return cols


def score_table(pool: pa.Table, teacher: Model, student: Model, *, config: ScoreConfig = ScoreConfig(),
                device: torch.device | str = "cpu") -> tuple[pa.Table, list[tuple[str, str]]]:
    """Score one pool-schema table. Returns (scores table, [(sample_id, error)] quarantined)."""
    check_models(teacher, student)
    device = torch.device(device)
    n = pool.num_rows
    ids = pool.column("sample_id").to_pylist()
    errors = read_errors(pool)  # payloads a pool reader refused (FIFO, over the size cap…): quarantined as such
    if n and pool.column("image").null_count == n and errors is None:
        raise KdataError("pool has no images: image models cannot score text; pass precomputed predictions "
                         "with --scores FILE.parquet")
    images = pool.column("image").to_pylist()
    labels = label_indices(pool.column("label"), teacher.class_names)
    keys = list(dict.fromkeys([teacher.preprocess_key, student.preprocess_key]))
    keep_logits = config.keep_logits == "yes" or (config.keep_logits == "auto" and teacher.num_classes <= 128)

    chunks: dict[str, list] = {}
    rows: list[np.ndarray] = []
    quarantined: list[tuple[str, str]] = []
    pin = device.type == "cuda"
    with torch.inference_mode(), _autocast(device):
        for idx, batch, bad in iter_decoded(images, keys, batch_size=config.batch_size,
                                            num_workers=config.num_workers, pin=pin,
                                            errors=errors, max_pixels=config.max_pixels):
            quarantined += [(ids[i], err) for i, err in bad]
            if not len(idx):
                continue
            xt = batch[teacher.preprocess_key].to(device, non_blocking=pin)
            xs = batch[student.preprocess_key].to(device, non_blocking=pin)
            if device.type == "cuda":
                xt, xs = xt.contiguous(memory_format=torch.channels_last), xs.contiguous(memory_format=torch.channels_last)
            t_logits, t_feat = teacher.forward(xt)
            s_logits, _ = student.forward(xs)
            li = torch.from_numpy(labels[idx.numpy()]).to(device)
            st = disagreement(t_logits.float(), s_logits.float(), temperature=config.temperature,
                              topk=config.topk, label_idx=li)
            if keep_logits:
                st["teacher_logits"] = t_logits.float()
                st["student_logits"] = s_logits.float()
            if config.embeddings and t_feat is not None:
                st["embedding"] = t_feat.float().half()
            for k, v in st.items():
                chunks.setdefault(k, []).append(v.cpu().numpy())
            rows.append(idx.numpy())
    order = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
    cols: dict[str, pa.Array] = {
        "sample_id": pa.array([ids[i] for i in order], pa.string()),
        "label_idx": pa.array(labels[order], pa.int32()),
    }
    cols.update(score_columns(chunks))
    if not len(order):
        table = SCORES_SCHEMA.empty_table()
    else:
        names = [f.name for f in SCORES_SCHEMA] + [k for k in SCORES_OPTIONAL if k in cols]
        table = pa.table({k: cols[k] for k in names})
    return table, quarantined


def unit_cache_key(unit: PoolUnit, teacher: Model, student: Model, config: ScoreConfig) -> str:
    payload = {"unit": unit.fingerprint(), "teacher": teacher.checksum, "student": student.checksum,
               "config": config.key(), "kdata": __version__, "temperature": config.temperature,
               "decode": DECODE_VERSION}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]


def score_unit(unit: PoolUnit, teacher: Model, student: Model, *, config: ScoreConfig = ScoreConfig(),
               device="cpu", cache: bool = True) -> tuple[Path, list[tuple[str, str]], int, bool]:
    """Score one pool unit into a cached Parquet file. Returns (path, quarantined, n_in, cache_hit)."""
    key = unit_cache_key(unit, teacher, student, config)
    root = cache_dir("scores")
    path, qpath = root / f"{key}.parquet", root / f"{key}.quarantine.json"
    with exclusive(path, wait=True):  # two runs over one unit: the second waits, then reuses the entry
        if cache and path.exists() and qpath.exists():
            done = json.loads(qpath.read_text())
            return path, [tuple(x) for x in done["quarantined"]], done["n_in"], True
        pool = unit.read()
        table, quarantined = score_table(pool, teacher, student, config=config, device=device)
        write_parquet(path, table, row_group_size=4096)
        # written last: its presence marks the unit complete
        write_json(qpath, {"n_in": pool.num_rows, "quarantined": quarantined, "unit": unit.name})
    return path, quarantined, pool.num_rows, False


def score_pool(pool: Pool, teacher: Model, student: Model, *, config: ScoreConfig = ScoreConfig(),
               device="cpu", cache: bool = True, progress=None) -> tuple[pa.Table, list[tuple[str, str]], dict]:
    """Score every unit of ``pool``. Returns (scores, quarantined, info: n_in, units, cache_hits)."""
    tables, quarantined, hits, n_in = [], [], 0, 0
    if progress:
        progress("scoring", 0, len(pool.units))
    for i, unit in enumerate(pool.units):
        path, q, n, hit = score_unit(unit, teacher, student, config=config, device=device, cache=cache)
        tables.append(read_parquet(path))
        quarantined += q
        hits += hit
        n_in += n
        if progress:
            progress("scoring", i + 1, len(pool.units))
    scores = pa.concat_tables(tables) if tables else SCORES_SCHEMA.empty_table()
    return scores, quarantined, {"units": len(pool.units), "cache_hits": hits, "n_in": n_in}
