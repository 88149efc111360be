"""Score a pool with teacher and student: batched inference, disagreement statistics, caching.

One decode pipeline per run (``kdata.scoring.engine``): DataLoader workers start once, when the
first uncached unit needs them, read the image bytes themselves and stay up across all units;
teacher and student share one decode per batch (one tensor per distinct preprocessing). With
CUDA, JPEGs are decoded by nvJPEG on the GPU. Undecodable samples are quarantined with their error.

Each pool unit's scores are cached under ``$KDATA_CACHE/scores`` keyed by (unit fingerprint,
model checksums, scoring config, precision, device type, kdata version) and written as soon as
the unit is complete: a rerun after a crash, or over a pool that only grew, scores only what is
new, and cached units start no worker at all. An entry is trusted only when it matches what its
quarantine JSON records (rows, size, CRC-32; ``kdata.scoring.cache_entries``): a damaged one is
dropped under its lock, named in a warning line and scored again. A run on one device type or
precision never reuses another's scores (bf16 autocast moves ``kl_ts`` by up to 0.09 against fp32).

Precision is a recorded choice (``--precision``): ``auto`` is bf16 autocast on CUDA and fp32
elsewhere; ``fp32`` on a GPU also turns TF32 off for the run, so its matmuls and convolutions
round like the CPU's.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from kdata.core.atomic import drop_partial_writes, read_parquet
from kdata.core.errors import KdataError
from kdata.core.exact_probs import EXACT_VERSION, keeps_logits
from kdata.core.lock import acquire
from kdata.core.paths import cache_dir
from kdata.core.stats import with_temperature
from kdata.core.version import __version__
from kdata.dataset.schema import SCORES_OPTIONAL, SCORES_SCHEMA, read_errors
from kdata.models.decode_pool import check_workers, resolve_workers
from kdata.models.images import DEFAULT_MAX_PIXELS
from kdata.models.spec import Model
from kdata.pools.base import TableRows
from kdata.pools.spec import Pool, PoolUnit
from kdata.scoring.cache_entries import DamagedEntry, drop_entry, read_unit_entry, warn_dropped, write_entry
from kdata.scoring.engine import ScoringRun
from kdata.scoring.model_checks import check_models  # noqa: F401  (re-exported)
from kdata.scoring.precision import PRECISIONS, check_precision  # noqa: F401  (re-exported)
from kdata.scoring.unit_state import UnitState

DECODE_VERSION = 4  # bump when decoding changes what a model sees (invalidates cached scores); 4: formats


@dataclass(frozen=True)
class ScoreConfig:
    """How a pool is scored; ``key()`` is the part that decides the scores (the score cache key)."""

    batch_size: int = 256
    topk: int = 5
    temperature: float = 1.0
    num_workers: int | str = 0  # decode worker processes, or "auto" (kdata.models.decode_pool.resolve_workers)
    embeddings: bool = True  # keep the teacher's penultimate features (float16) for dedup/critic
    # read the cached ``embedding`` column into the run's scores table (``score_pool``); not part of the
    # key: entries are computed and cached alike, only a run no step of which reads them leaves them on disk
    load_embeddings: bool = True
    keep_logits: str = "auto"  # "auto" (when C ≤ 128), "yes", "no"
    max_pixels: int = DEFAULT_MAX_PIXELS  # larger images are quarantined before decoding (--max-pixels)
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 elsewhere), fp32, bf16 (--precision)
    gpu_decode: bool = True  # on CUDA, decode JPEGs with nvJPEG (False: every image on the CPU workers)

    def __post_init__(self):
        object.__setattr__(self, "num_workers", check_workers(self.num_workers))
        check_precision(self.precision)

    def key(self) -> dict:
        d = asdict(self)
        for run_only in ("batch_size", "num_workers", "load_embeddings"):
            d.pop(run_only)
        return d


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """``auto`` → bf16 on CUDA (autocast), fp32 elsewhere; ``fp32``/``bf16`` as given."""
    check_precision(precision)
    if precision == "auto":
        return "bf16" if torch.device(device).type == "cuda" else "fp32"
    return precision


@contextmanager
def precision_mode(precision: str, device: torch.device):
    """Run the block at ``precision`` (resolved): bf16 autocast, or fp32 — with TF32 off on CUDA for
    the block (cuBLAS matmuls and cuDNN convolutions), restored afterwards."""
    if precision == "bf16":
        with torch.autocast(device.type, dtype=torch.bfloat16):
            yield
        return
    if device.type != "cuda":
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@contextmanager
def eval_mode(*models: Model):
    """The models' modules in eval mode for the block (dropout off, BatchNorm on its running statistics,
    which stay as they are), each submodule's own mode restored afterwards."""
    modules = [m.module for m in models if isinstance(getattr(m, "module", None), torch.nn.Module)]
    saved = [(sub, sub.training) for mod in modules for sub in mod.modules()]
    try:
        for sub, _ in saved:  # what .eval() sets (an exported program's module refuses .eval() itself)
            sub.training = False
        yield
    finally:
        for sub, training in saved:
            sub.training = training


def label_indices(labels: pa.Array | pa.ChunkedArray, class_names: list[str]) -> np.ndarray:
    """The index of each web label in ``class_names`` (int32; −1 for a null label, one not among the
    classes, or a label column that holds no strings)."""
    if pa.types.is_dictionary(labels.type):
        labels = labels.cast(labels.type.value_type)
    if not (pa.types.is_string(labels.type) or pa.types.is_large_string(labels.type)):
        return np.full(len(labels), -1, dtype=np.int32)
    idx = pc.index_in(labels, value_set=pa.array([str(n) for n in class_names], labels.type))
    return pc.fill_null(idx, -1).to_numpy(zero_copy_only=False).astype(np.int32)


def score_columns(chunks: dict[str, list[np.ndarray]]) -> dict[str, pa.Array]:
    """Per-batch numpy results → Arrow columns typed as the scores schema (2-D → fixed-size lists)."""
    types = {f.name: f.type for f in SCORES_SCHEMA}
    types.update(SCORES_OPTIONAL)
    cols = {}
    for k, parts in chunks.items():
        arr = parts[0] if len(parts) == 1 else np.concatenate(parts)
        if arr.ndim == 2:
            cols[k] = pa.FixedSizeListArray.from_arrays(pa.array(arr.reshape(-1)), arr.shape[1]).cast(types[k])
        else:
            cols[k] = pa.array(arr).cast(types[k])
    return cols


def unit_table(st: UnitState) -> pa.Table:
    """A finished unit's scores (scored rows in row order); a unit without any image is one line."""
    if st.n_in and st.empty == st.n_in:
        raise KdataError("pool has no images: image models cannot score text; pass precomputed predictions "
                         "with --scores FILE.parquet")
    order = np.concatenate(st.rows) if st.rows else np.zeros(0, dtype=np.int64)
    if not len(order):
        return SCORES_SCHEMA.empty_table()
    labels = np.asarray(st.label_idx, dtype=np.int32)
    cols: dict[str, pa.Array] = {
        "sample_id": pa.array([st.ids[i] for i in order], pa.string()),
        "label_idx": pa.array(labels[order], pa.int32()),
    }
    cols.update(score_columns(st.results()))
    names = [f.name for f in SCORES_SCHEMA] + [k for k in SCORES_OPTIONAL if k in cols]
    return pa.table({k: cols[k] for k in names})


def score_table(pool: pa.Table, teacher: Model, student: Model, *, config: ScoreConfig = ScoreConfig(),
                device: torch.device | str = "cpu") -> tuple[pa.Table, list[tuple[str, str]]]:
    """Score one pool-schema table (not cached). Returns (scores table, [(sample_id, error)] quarantined)."""
    check_models(teacher, student)
    device = torch.device(device)
    n = pool.num_rows
    if n and pool.column("image").null_count == n and read_errors(pool) is None:
        raise KdataError("pool has no images: image models cannot score text; pass precomputed predictions "
                         "with --scores FILE.parquet")
    st, out, plan = UnitState(0, "table"), {}, TableRows(pool)
    precision = resolve_precision(config.precision, device)
    run = ScoringRun(teacher, student, config=config, device=device, precision=precision,
                     on_unit=lambda s: out.update(table=unit_table(s)),
                     gpu_decode=config.gpu_decode and device.type == "cuda")
    workers = resolve_workers(config.num_workers, rows=n, device=device)
    with torch.inference_mode(), precision_mode(precision, device), eval_mode(teacher, student):
        run.run([st], run.tasks([st], lambda i: plan, lambda s: True), num_workers=workers)
    return with_temperature(out["table"], config.temperature), st.quarantined


def unit_cache_key(unit: PoolUnit, teacher: Model, student: Model, config: ScoreConfig, *,
                   device: torch.device | str = "cpu") -> str:
    """The score cache key of a unit: its content and name (default sample ids are made from the name,
    so a copied or renamed file is scored under its own ids), the models, the scoring config, the
    precision as resolved for ``device`` and the device type (never a bf16 GPU score for an fp32 CPU run)."""
    device = torch.device(device)
    cfg = {**config.key(), "precision": resolve_precision(config.precision, device),
           "gpu_decode": bool(config.gpu_decode and device.type == "cuda")}
    payload = {"unit": unit.fingerprint(), "name": unit.name, "teacher": teacher.checksum, "student": student.checksum,
               "config": cfg, "device": device.type, "kdata": __version__, "temperature": config.temperature,
               "decode": DECODE_VERSION}
    if not keeps_logits(config.keep_logits, teacher.num_classes):
        payload["exact"] = EXACT_VERSION  # the entries hold kdata.core.exact_probs' columns
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]


def score_unit(unit: PoolUnit, teacher: Model, student: Model, *, config: ScoreConfig = ScoreConfig(),
               device="cpu", cache: bool = True) -> tuple[Path, list[tuple[str, str]], int, bool]:
    """Score one pool unit into a cached Parquet file. Returns (path, quarantined, n_in, cache_hit)."""
    results, _ = score_units([unit], teacher, student, config=config, device=device, cache=cache)
    return results[0]


def score_pool(pool: Pool, teacher: Model, student: Model, *, config: ScoreConfig = ScoreConfig(),
               device="cpu", cache: bool = True, progress=None) -> tuple[pa.Table, list[tuple[str, str]], dict]:
    """Score every unit of ``pool`` (the modules in eval mode, their modes restored after). Returns
    (scores — at ``config.temperature``, recorded in the schema metadata: ``kdata.core.stats.with_temperature``
    —, quarantined, info: n_in, units, cache_hits, workers,
    decode_pids per unit (the worker processes that decoded it), head_batches (batches this process
    decoded while a cold run's workers started), device, precision, GPU decode counts and peak GPU
    memory on CUDA). ``config.load_embeddings=False`` leaves each entry's ``embedding`` column on disk
    (``unit_scores``): 260 B to 4 KB a row that no step of the run reads."""
    results, info = score_units(pool.units, teacher, student, config=config, device=device, cache=cache,
                                progress=progress)
    tables = [unit_scores(path, embedding=config.load_embeddings) for path, _, _, _ in results]
    # a unit whose rows were all quarantined wrote no embedding column (its width comes from a row)
    tables = [t for t in tables if t.num_rows] or tables[:1]
    scores = pa.concat_tables(tables, promote_options="default") if tables else SCORES_SCHEMA.empty_table()
    quarantined = [q for _, qs, _, _ in results for q in qs]
    return with_temperature(scores, config.temperature), quarantined, info


def unit_scores(path: Path, *, embedding: bool = True) -> pa.Table:
    """A unit's cached scores; without ``embedding``, every column but ``embedding`` (Parquet reads
    those alone), through one descriptor as ``read_parquet`` does."""
    if embedding:
        return read_parquet(path)
    with pa.OSFile(str(path)) as fh:
        pf = pq.ParquetFile(fh)
        return pf.read(columns=[n for n in pf.schema_arrow.names if n != "embedding"])


class UnitCache:
    """The score cache entries of one run's units: hits, the lock of each unit being scored, and
    the write of each finished unit (its Parquet file, then the quarantine JSON that marks it complete
    and records the file's rows, size and CRC-32, checked on every hit).

    Unit fingerprints (a hash of every byte of a folder unit) are computed in order by one
    background thread, ahead of the scoring loop that needs them, so hashing the next units
    overlaps the forward passes instead of stalling the thread that drives the device."""

    def __init__(self, units: list[PoolUnit], teacher: Model, student: Model, *, config: ScoreConfig,
                 device: torch.device, cache: bool, progress=None):
        self.units, self.cache, self.progress = units, cache, progress
        self.root = cache_dir("scores")
        self.hasher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kdata-unit-keys")
        self.keys = [self.hasher.submit(unit_cache_key, u, teacher, student, config, device=device) for u in units]
        self.results: dict[int, tuple[Path, list[tuple[str, str]], int, bool]] = {}
        self.states: list[UnitState] = [UnitState(i, u.name) for i, u in enumerate(units)]
        self.report_lock = threading.Lock()
        self.claimed: dict[str, int] = {}  # cache key → the unit of this run scoring it
        self.copies: dict[int, int] = {}  # a unit whose content another unit of this run scores → that unit

    def entry(self, i: int) -> tuple[Path, Path]:
        key = self.keys[i].result()
        return self.root / f"{key}.parquet", self.root / f"{key}.quarantine.json"

    def close(self) -> None:
        self.hasher.shutdown(wait=False, cancel_futures=True)
        for st in self.states:
            self.release(st)

    def hit(self, i: int, *, locked: bool = False) -> bool:
        """Whether unit i is cached (then its result is recorded and counted). A damaged entry is a
        miss; ``locked`` (the caller holds the entry's lock) also drops it, with a warning line."""
        if not self.cache:
            return False
        path, qpath = self.entry(i)
        try:
            found = read_unit_entry(path, qpath, self.units[i].name)
        except DamagedEntry as damage:
            if locked:
                drop_entry(self.states[i].lock, path, qpath)
                warn_dropped(damage, "score cache entry")
            return False
        if found is None:
            return False
        self.results[i] = (path, found[0], found[1], True)
        self.report()
        return True

    def claim(self, st: UnitState) -> bool:
        """Lock unit ``st`` for scoring (waiting for another run scoring it, then reusing its entry);
        False when it is cached, or when an earlier unit of this run with the same content is being
        scored (its result is then this unit's, see ``copy_results``)."""
        if self.hit(st.index):
            return False
        key = self.keys[st.index].result()
        if key in self.claimed:
            self.copies[st.index] = self.claimed[key]
            return False
        st.lock = acquire(self.entry(st.index)[0], wait=True)
        if self.hit(st.index, locked=True):
            self.release(st)
            return False
        drop_partial_writes(*self.entry(st.index))
        self.claimed[key] = st.index
        return True

    def copy_results(self) -> None:
        """Units that had the content of an earlier unit of this run get its entry, as a cache hit."""
        for i, j in self.copies.items():
            path, quarantined, n_in, _ = self.results[j]
            self.results[i] = (path, quarantined, n_in, True)
        if self.copies:
            self.report()

    def finish(self, st: UnitState) -> None:
        """Write a scored unit's entry as soon as its last batch is in, then release its lock."""
        path, qpath = self.entry(st.index)
        # the quarantine JSON, written last, marks the unit complete and records the file's rows, size, CRC-32
        write_entry(path, qpath, unit_table(st), {"n_in": st.n_in, "quarantined": st.quarantined, "unit": st.name},
                    row_group_size=4096)
        self.results[st.index] = (path, st.quarantined, st.n_in, False)
        self.release(st)
        self.report()

    def release(self, st: UnitState) -> None:
        if st.lock is not None:
            st.lock.release()
            st.lock = None

    def report(self) -> None:
        """Progress, from whichever thread finished or found a unit: one report at a time, never backwards."""
        if self.progress:
            with self.report_lock:
                self.progress("scoring", len(self.results), len(self.units))


def score_units(units: list[PoolUnit], teacher: Model, student: Model, *, config: ScoreConfig = ScoreConfig(),
                device="cpu", cache: bool = True, progress=None
                ) -> tuple[list[tuple[Path, list[tuple[str, str]], int, bool]], dict]:
    """Score ``units`` through one decode pipeline. Returns ([(path, quarantined, n_in, cache_hit)] per
    unit, run info). Cached units are skipped before any worker starts; workers start only when the
    first uncached unit is found, and serve every unit after it."""
    check_models(teacher, student)
    if any(getattr(m, "kind", None) in ("causal_lm", "classifier") for m in (teacher, student)):
        raise KdataError("text models (hf:PATH, builtin:text-*) are scored by kdata.scoring.text (kdata select); "
                         "this scorer takes image models")
    device = torch.device(device)
    precision = resolve_precision(config.precision, device)
    units = list(units)
    t0 = time.perf_counter()
    store = UnitCache(units, teacher, student, config=config, device=device, cache=cache, progress=progress)
    if progress:
        progress("scoring", 0, len(units))
    workers, run = 0, None
    try:
        first = next((i for i in range(len(units)) if not store.hit(i)), None)
        if first is not None:
            first_plan = units[first].plan()
            rows = first_plan.num_rows * (len(units) - first)  # an estimate: later units are not opened yet
            workers = resolve_workers(config.num_workers, rows=rows, device=device)
            run = ScoringRun(teacher, student, config=config, device=device, precision=precision,
                             on_unit=store.finish, gpu_decode=config.gpu_decode and device.type == "cuda")
            todo = store.states[first:]
            tasks = run.tasks(todo, lambda i: first_plan if i == first else units[i].plan(), store.claim)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            with torch.inference_mode(), precision_mode(precision, device), eval_mode(teacher, student):
                run.run(todo, tasks, num_workers=workers)
        store.copy_results()
    finally:
        store.close()
    results = [store.results[i] for i in range(len(units))]
    info = {"units": len(units), "cache_hits": sum(r[3] for r in results), "n_in": sum(r[2] for r in results),
            "device": device.type, "precision": precision, "workers": workers,
            "decode_pids": {st.name: sorted(st.pids) for st in store.states if st.pids},
            "head_batches": run.info["head_batches"] if run is not None else 0,
            "seconds": time.perf_counter() - t0}
    if run is not None and run.first_batch_at is not None:
        info["seconds_to_first_batch"] = run.first_batch_at - t0
    if run is not None and device.type == "cuda":
        info.update(gpu_jpegs=run.info["gpu_jpegs"], gpu_jpeg_fallbacks=run.info["gpu_jpeg_fallbacks"],
                    cuda_peak_bytes=int(torch.cuda.max_memory_allocated(device)))
    return results, info
