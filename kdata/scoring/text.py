"""Score a text pool with Hugging Face teacher, student (and reference) models, cached per unit.

Two kinds of model pair (``kdata.models.hf``):

* **sequence classifiers** give the same per-sample statistics as image classifiers
  (``kdata.core.stats.disagreement``: top-k soft labels, KL, entropies, margins; logits when
  C ≤ 128), so every selection method works unchanged;
* **causal LMs** give per sequence the mean and summed token NLL of teacher, student and the
  optional reference, the teacher's mean token entropy, ``kl_ts`` (mean token KL(teacher‖student),
  only when both tokenise alike; null otherwise) and ``n_tokens`` (a model that tokenises otherwise:
  its NLL per byte in the teacher's units, ``kdata.scoring.text_lm``); per token the teacher's top-k
  next-token ids, log-probs (float16) and leftover mass over the stored ``input_ids``
  (``kdata.scoring.text_stats``, column contract in docs/text.md).

Rows are tokenised, bucketed by length and padded per batch (``kdata.scoring.text_batches``).
A row whose text cannot be scored is quarantined with the reason (``kdata.pools.text.text_problems``:
``empty_text``, ``undecodable_text: …``, ``too_long: …``; a causal LM also needs two tokens).
Models that share the teacher's tokenizer are scored on the same ids, so ``text_models`` truncates
them all to the smallest ``max_length`` among them (``TextModels.max_length``: what the run info
records as ``max_length``; ``length_limited_by`` names the model that set it when that is below
the teacher's own limit). Each unit's scores are cached under ``$KDATA_CACHE/scores`` keyed by the
unit's fingerprint, the models' checksums, their precision and ``max_length``, the effective
``max_length``, the device type and the scoring options.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, is_dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from kdata.core.atomic import drop_partial_writes, read_parquet
from kdata.core.errors import KdataError
from kdata.core.exact_probs import EXACT_VERSION, keeps_logits
from kdata.core.lock import acquire
from kdata.core.paths import cache_dir
from kdata.core.version import __version__
from kdata.pools.text import DEFAULT_MAX_TEXT_CHARS, text_problems
from kdata.scoring.cache_entries import DamagedEntry, drop_entry, read_unit_entry, warn_dropped, write_entry
from kdata.scoring.score import check_models, label_indices
from kdata.scoring.text_classifier import classifier_rows
from kdata.scoring.text_lm import LM_SCHEMA, lm_rows

TEXT_SCORING_VERSION = 2  # bump when what a text row's scores mean changes (invalidates the cache)


@dataclass(frozen=True)
class TextScoreConfig:
    batch_size: int = 64  # rows per forward pass at most
    tokens_per_batch: int = 16_384  # padded tokens per forward pass at most (rows × longest row)
    token_topk: int = 8  # causal LM: teacher next-token soft labels kept per position
    topk: int = 5  # classifier: teacher soft labels kept per row
    temperature: float = 1.0  # classifier statistics (causal-LM token log-probs are at temperature 1)
    max_text_chars: int = DEFAULT_MAX_TEXT_CHARS
    keep_logits: str = "auto"  # classifier: "auto" (C ≤ 128), "yes", "no"

    def key(self) -> dict:
        d = asdict(self)
        d.pop("batch_size")
        d.pop("tokens_per_batch")
        return d


@dataclass
class TextModels:
    """The models of a text run and whether the student / reference share the teacher's tokenizer.

    ``teacher`` (and a student / reference sharing its tokenizer) carry the effective ``max_length``:
    the smallest among them, since they are all run on the teacher's ids. ``length_limited_by``:
    ``(role, spec, teacher's own max_length)`` when another model lowered it, else None."""

    teacher: object
    student: object
    reference: object = None
    shared: bool = False
    ref_shared: bool = False
    length_limited_by: tuple | None = None

    @property
    def kind(self) -> str:
        return self.teacher.kind

    @property
    def max_length(self) -> int:
        """Tokens per text at most for the teacher and every model sharing its tokenizer."""
        return self.teacher.max_length


def text_models(teacher, student, reference=None) -> TextModels:
    """Check a text model set (one line each) and find which share the teacher's tokenizer."""
    from kdata.models.hf import same_tokenizer

    for role, m in (("teacher", teacher), ("student", student), ("reference", reference)):
        if m is not None and getattr(m, "kind", None) not in ("causal_lm", "classifier"):
            raise KdataError(f"--{role} {m.spec}: not a text model; a text run needs hf:PATH or builtin:text-* "
                             "for teacher, student and reference")
    if teacher.kind != student.kind:
        raise KdataError(f"teacher {teacher.spec} is a {teacher.kind} but student {student.spec} is a {student.kind}")
    if teacher.kind == "classifier":
        check_models(teacher, student)
        if reference is not None:
            raise KdataError("--reference: a reference model is used with causal LMs (MiniPLM), not classifiers")
    elif reference is not None and reference.kind != "causal_lm":
        raise KdataError(f"--reference {reference.spec}: expected a causal LM, got a {reference.kind}")
    shared = same_tokenizer(teacher, student)
    ref_shared = reference is not None and same_tokenizer(teacher, reference)
    group = [("student", student, shared), ("reference", reference, ref_shared)]
    own = teacher.max_length
    limit = min([own, *(m.max_length for _, m, same in group if same)])
    limited_by = None
    if limit < own:  # a shorter model fed the teacher's ids would index past its position table
        role, m = next((r, m) for r, m, same in group if same and m.max_length == limit)
        limited_by = (role, m.spec, own)
        teacher = _with_max_length(teacher, limit)
    if shared:
        student = _with_max_length(student, limit)
    if ref_shared:
        reference = _with_max_length(reference, limit)
    return TextModels(teacher, student, reference, shared=shared, ref_shared=ref_shared,
                      length_limited_by=limited_by)


def _with_max_length(model, n: int):
    """``model`` with ``max_length`` ``n`` (a copy sharing its weights and tokenizer; the loaded one,
    which a per-process model cache may hand to another run, is left as it is)."""
    if model.max_length == n:
        return model
    if not is_dataclass(model):
        raise KdataError(f"{model.spec}: cannot limit its max_length to {n} (shared tokenizer, shorter model)")
    return replace(model, max_length=n)


def text_unit_key(unit, models: TextModels, config: TextScoreConfig, *, device) -> str:
    """Cache key: the unit's content and name (the default sample ids' basis), each model's checksum,
    precision and max_length (the teacher's: the effective one, ``TextModels.max_length``), the device
    type, the scoring options and the kdata version."""
    def who(m):
        return None if m is None else [m.checksum, m.precision, m.max_length]

    payload = {"unit": unit.fingerprint(), "name": unit.name, "teacher": who(models.teacher), "student": who(models.student),
               "reference": who(models.reference), "config": config.key(), "device": torch.device(device).type,
               "kdata": __version__, "version": TEXT_SCORING_VERSION, "kind": models.kind}
    if models.kind != "causal_lm" and not keeps_logits(config.keep_logits, models.teacher.num_classes):
        payload["exact"] = EXACT_VERSION  # the entries hold kdata.core.exact_probs' columns
    return "text-" + hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]


def score_text_table(table: pa.Table, models: TextModels, *, config: TextScoreConfig = TextScoreConfig(),
                     device="cpu") -> tuple[pa.Table, list[tuple[str, str]]]:
    """Score one pool-schema table (not cached): (scores table in row order, [(sample_id, reason)])."""
    device = torch.device(device)
    if table.num_rows and ("text" not in table.column_names or
                           (table.column("text").null_count == table.num_rows and
                            "image" in table.column_names and table.column("image").null_count < table.num_rows)):
        raise KdataError("pool has images, not text: text models score a `text` column (JSONL, Parquet or a "
                         "saved Hugging Face dataset)")
    ids = table.column("sample_id").to_pylist()
    problems = text_problems(table, max_chars=config.max_text_chars)
    ok = np.array([p is None for p in problems], dtype=bool)
    quarantined = [(ids[i], problems[i]) for i in np.flatnonzero(~ok)]
    rows = table.filter(pa.array(ok))
    texts = rows.column("text").to_pylist()
    label_idx = (np.full(rows.num_rows, -1, np.int32) if models.kind == "causal_lm"
                 else label_indices(rows.column("label"), models.teacher.class_names))
    with torch.inference_mode():
        if models.kind == "causal_lm":
            cols, bad = lm_rows(texts, models, config=config, device=device)
        else:
            cols, bad = classifier_rows(texts, label_idx, models, config=config, device=device)
    keep = np.ones(rows.num_rows, dtype=bool)
    kept_ids = rows.column("sample_id").to_pylist()
    for i, reason in bad:
        keep[i] = False
        quarantined.append((kept_ids[i], reason))
    out = pa.table({"sample_id": rows.column("sample_id").cast(pa.string()),
                    "label_idx": pa.array(label_idx, pa.int32()), **cols})
    return out.filter(pa.array(keep)), quarantined


def _text_schema(schema: pa.Schema) -> None:
    """A text scores entry holds one row per scored sample, keyed by ``sample_id``."""
    if "sample_id" not in schema.names:
        raise KdataError("no sample_id column")


def _cached(path: Path, qpath: Path, name: str, lock=None):
    """The entry's (quarantined, n_in), or None: absent, unfinished or damaged (then, holding ``lock``,
    dropped with a warning line and scored again, as ``kdata.scoring.score.UnitCache`` does)."""
    try:
        return read_unit_entry(path, qpath, name, check_schema=_text_schema)
    except DamagedEntry as damage:
        if lock is not None:
            drop_entry(lock, path, qpath)
            warn_dropped(damage, "score cache entry")
        return None


def score_text_unit(unit, models: TextModels, *, config: TextScoreConfig, device, cache: bool = True
                    ) -> tuple[Path, list[tuple[str, str]], int, bool]:
    """Score one unit into its cache entry: (path, quarantined, n_in, cache_hit)."""
    key = text_unit_key(unit, models, config, device=device)
    root = cache_dir("scores")
    path, qpath = root / f"{key}.parquet", root / f"{key}.quarantine.json"
    hit = _cached(path, qpath, unit.name) if cache else None
    if hit is not None:
        return path, hit[0], hit[1], True
    lock = acquire(path, wait=True)
    try:
        hit = _cached(path, qpath, unit.name, lock) if cache else None
        if hit is not None:
            return path, hit[0], hit[1], True
        drop_partial_writes(path, qpath)
        table = unit.read()
        scores, quarantined = score_text_table(table, models, config=config, device=device)
        # the quarantine JSON, written last, marks the unit complete and records the file's rows, size, CRC-32
        write_entry(path, qpath, scores, {"n_in": table.num_rows, "quarantined": quarantined, "unit": unit.name})
        return path, quarantined, table.num_rows, False
    finally:
        lock.release()


def score_text_pool(pool, models: TextModels, *, config: TextScoreConfig = TextScoreConfig(), device="cpu",
                    cache: bool = True, progress=None) -> tuple[pa.Table, list[tuple[str, str]], dict]:
    """Score every unit of a text pool. Returns (scores, quarantined, info)."""
    device = torch.device(device)
    t0 = time.perf_counter()
    results = []
    if progress:
        progress("scoring", 0, len(pool.units))
    for i, unit in enumerate(pool.units):
        results.append(score_text_unit(unit, models, config=config, device=device, cache=cache))
        if progress:
            progress("scoring", i + 1, len(pool.units))
    tables = [read_parquet(p) for p, _, _, _ in results]
    tables = [t for t in tables if t.num_rows] or tables[:1]
    scores = pa.concat_tables(tables, promote_options="default") if tables else \
        (LM_SCHEMA.empty_table() if models.kind == "causal_lm" else pa.table({"sample_id": pa.array([], pa.string())}))
    quarantined = [q for _, qs, _, _ in results for q in qs]
    info = {"units": len(results), "cache_hits": sum(r[3] for r in results), "n_in": sum(r[2] for r in results),
            "device": device.type, "precision": models.teacher.precision, "workers": 0, "kind": models.kind,
            "max_length": models.max_length, "tokenizer_shared": models.shared,
            "seconds": time.perf_counter() - t0}
    if models.kind == "causal_lm":
        info["token_topk"] = effective_token_topk(config.token_topk, models.teacher)  # what the shards hold
        if models.reference is not None:
            info["reference_tokenizer_shared"] = models.ref_shared
    return scores, quarantined, info


def effective_token_topk(token_topk: int, teacher) -> int:
    """The k a causal-LM teacher's rows store per token: ``token_topk`` capped at its vocabulary."""
    return min(int(token_topk), teacher.vocab_size)
