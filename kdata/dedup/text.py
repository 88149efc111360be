"""Deduplication of text: exact on normalised text, near and semantic on sentence embeddings.

* **exact** — sha256 of the text normalised the way copies of one text differ on the web: Unicode
  NFKC (compatibility forms: full-width letters, ligatures, non-breaking spaces), case folded
  (``str.casefold``), every run of whitespace collapsed to one space, ends stripped.
* **near** — cosine similarity of sentence embeddings (``--embedder hf:PATH``: mean-pooled hidden
  states of a local encoder, e.g. a sentence-transformers directory; ``kdata.models.text_embedder``)
  at ``TEXT_NEAR_THRESHOLD``: the same text with small edits (a word, punctuation, a line).
* **semantic** — SemDeDup (Abbas et al. 2023, arXiv 2303.09540) on the same embeddings at
  ``TEXT_SEMANTIC_THRESHOLD`` (or ``--dedup-frac``).

The survivor rules are ``kdata.dedup.faiss_dedup``'s. Without an embedder, text has no near-copy
vector: an explicit ``--dedup near|semantic`` is refused in one line before any work
(``kdata.pipeline.prepare``); the default recipe's implicit ``near`` runs the exact level and
records that near was skipped. The thresholds are kdata's choices, not measured on a real encoder
here (no weights can be downloaded on the development machine): 0.95 is the cosine above which
sentence encoders put re-punctuated or one-word-edited copies, 0.90 (SemDeDup's ε = 0.1) a
semantic cut; pass ``--dedup-threshold`` to change them.

An embedder that does not separate texts (e.g. a tiny causal LM: nearly every vector alike) makes
near/semantic dedup remove almost everything. ``collapse_warning`` flags a run where they removed
more than ``COLLAPSE_SHARE`` (half) of the texts exact dedup left: in a real pool most texts are not
small edits of another, while a collapsed embedder removes nearly all of them.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

import numpy as np
from kdata.core.warn import warn

TEXT_NEAR_THRESHOLD = 0.95
TEXT_SEMANTIC_THRESHOLD = 0.90
COLLAPSE_SHARE = 0.5  # near + semantic removing more than this share of the distinct texts: warn
COLLAPSE_MIN_TEXTS = 20  # below this many distinct candidates the share says little
_SPACE = re.compile(r"\s+")


def normalize_text(text: str | None) -> str:
    """NFKC, case folded, whitespace collapsed and stripped (what exact text dedup compares)."""
    return _SPACE.sub(" ", unicodedata.normalize("NFKC", text or "").casefold()).strip()


def text_hash(text: str | None) -> str:
    """sha256 of ``normalize_text(text)`` (prefixed, so it never equals an image hash)."""
    return hashlib.sha256(b"text:" + normalize_text(text).encode("utf-8", "surrogatepass")).hexdigest()


def pool_texts(pool, ids: np.ndarray) -> np.ndarray:
    """The ``text`` of each of ``ids`` (object array, row-aligned), unit by unit over the pool: only the
    rows of ``ids`` are read (``PoolUnit.take_ids``), and no unit after the last of them is found."""
    ids = np.asarray(ids, dtype=object)
    pos_of = {s: i for i, s in enumerate(ids.tolist())}
    out = np.full(len(ids), None, dtype=object)
    found = np.zeros(len(ids), dtype=bool)
    for unit in pool.units:
        if found.all():
            break
        t = unit.take_ids(pos_of)
        if not t.num_rows or "text" not in t.column_names:
            continue
        where = np.array([pos_of[s] for s in t.column("sample_id").to_pylist()], dtype=np.int64)
        out[where] = t.column("text").to_pylist()
        found[where] = True
    if not found.all():
        raise RuntimeError(f"dedup: {int((~found).sum())} candidates not found in the pool")
    return out


def text_embeddings(texts, spec: str, *, device="cpu", batch_size: int = 64) -> np.ndarray:
    """(N, d) float32 L2-normalised sentence embeddings of ``texts`` from the embedder ``spec``."""
    from kdata.models.text_embedder import embed_texts, load_embedder

    emb = load_embedder(spec, device=device)
    return embed_texts(emb, [t or "" for t in texts], batch_size=batch_size)


TEXT_DEFAULTS = {"near_default": TEXT_NEAR_THRESHOLD, "semantic_default": TEXT_SEMANTIC_THRESHOLD}
NEAR_SKIPPED = "skipped: near dedup of text compares sentence embeddings (give --embedder hf:PATH)"


def collapse_warning(info: dict, *, embedder: str, frac: float | None = None, images: bool = False) -> str | None:
    """When near/semantic dedup (``dedup_ranked``'s ``info``) removed more than ``COLLAPSE_SHARE`` of
    the candidates exact dedup left, record ``info["warning"]`` and issue it once (``kdata.core.warn``); the
    semantic removals ``--dedup-frac`` asked for do not count. ``images``: ``embedder`` is the model
    whose penultimate features semantic dedup compared (near compares 16×16 pixel vectors). Returns the
    warning or None."""
    removed = info.get("removed") or {}
    distinct = int(info.get("n_in", 0)) - int(removed.get("exact", 0))
    n = int(removed.get("near", 0)) + (0 if frac is not None else int(removed.get("semantic", 0)))
    if distinct < COLLAPSE_MIN_TEXTS or n <= COLLAPSE_SHARE * distinct:
        return None
    if images:
        cause = (f"the teacher {embedder}'s features may not separate the images (raise --dedup-threshold, or "
                 "remove a chosen share with --dedup-frac)" if removed.get("semantic") else
                 "the pool's images may be near-copies of few pictures (raise --dedup-threshold to keep more)")
    else:
        cause = f"the embedder {embedder} may not separate the texts (use a sentence encoder, or raise --dedup-threshold)"
    info["warning"] = (f"near/semantic dedup removed {n:,} of {distinct:,} distinct candidates (more than "
                       f"{COLLAPSE_SHARE:.0%}): {cause}")
    warn(info["warning"])
    return info["warning"]
