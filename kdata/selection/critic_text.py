"""Critic features for text (Symbolic KD critic, West et al., arXiv 2110.07178; I2D2, arXiv 2212.09246).

Symbolic KD's critic reads the generated text itself (a fine-tuned RoBERTa); kdata's text critic
is the same logistic regression as for images (``kdata.selection.critic_model``) over

* the causal-LM statistics of the text under teacher and student, as the text scoring computes
  them (``kdata.scoring.text``): ``teacher_nll``, ``student_nll``, ``teacher_entropy``, ``kl_ts``
  (0 where the tokenizers differ), ``n_tokens``, and ``nll_gap`` = student − teacher NLL;
* optionally a sentence embedding of the text from ``--embedder hf:PATH`` (mean-pooled hidden
  states, ``kdata.models.text_embedder``) as ``emb_0 … emb_{d-1}``.

The critic records its embedder (spec + checksum) so ``apply`` and ``select --method critic`` use
the same one; texts come from the scores table's ``text`` column, given texts, or the pool.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from kdata.core.errors import KdataError

TEXT_STATS = ("teacher_nll", "student_nll", "teacher_entropy", "kl_ts", "n_tokens")
_EMBEDDERS: dict = {}


def _embedder(spec: str, *, device="cpu", checksum: str | None = None):
    from kdata.models.text_embedder import load_embedder

    key = (spec, str(device))
    if key not in _EMBEDDERS:
        _EMBEDDERS[key] = load_embedder(spec, device=device)
    emb = _EMBEDDERS[key]
    if checksum and emb.checksum != checksum:
        raise KdataError(f"--embedder {spec}: its weights changed since the critic was fitted "
                         f"({emb.checksum[:19]} != {checksum[:19]}); refit the critic")
    return emb


def embedder_info(spec: str, *, device="cpu") -> dict:
    """What a text critic records about its embedder."""
    return {"embedder": spec, "embedder_checksum": _embedder(spec, device=device).checksum}


def texts_from_pool(pool, ids: list[str]) -> list[str]:
    """The ``text`` of each id, read from the pool's units, only the rows of ``ids`` (``PoolUnit.take_ids``;
    one line when an id is missing)."""
    want, found = set(ids), {}
    for unit in pool.units:
        t = unit.take_ids(want)
        if "text" not in t.column_names:
            continue
        found.update(zip(t.column("sample_id").to_pylist(), t.column("text").to_pylist()))
    missing = [i for i in ids if i not in found]
    if missing:
        raise KdataError(f"{pool.spec}: text of {len(missing)} scored row(s) not found, e.g. {missing[0]!r}")
    return [found[i] or "" for i in ids]


def stat_matrix(table: pa.Table) -> tuple[np.ndarray, list[str]]:
    """The statistics part of the features (module doc)."""
    missing = [c for c in TEXT_STATS if c not in table.column_names]
    if missing:
        raise KdataError(f"critic: the text scores lack column(s) {', '.join(missing)} (score with causal LMs: "
                         "--teacher/--student hf:PATH or builtin:text-*)")
    cols = [np.asarray(table.column(c).to_numpy(zero_copy_only=False), dtype=np.float64) for c in TEXT_STATS]
    cols.append(cols[1] - cols[0])
    X = np.stack(cols, axis=1) if table.num_rows else np.zeros((0, len(cols)))
    return np.nan_to_num(X, nan=0.0, posinf=0.0, neginf=0.0), [*TEXT_STATS, "nll_gap"]


def text_feature_matrix(table: pa.Table, *, embedder: str | None = None, texts: list[str] | None = None,
                        pool=None, device="cpu", embedder_checksum: str | None = None,
                        batch_size: int = 64) -> tuple[np.ndarray, list[str]]:
    """(features float64 rows × features, names) of text rows: statistics, then the embedding."""
    X, names = stat_matrix(table)
    if not embedder:
        return X, names
    if texts is None:
        ids = table.column("sample_id").to_pylist()
        if "text" in table.column_names:
            texts = table.column("text").to_pylist()
        elif pool is not None:
            texts = texts_from_pool(pool, ids)
        else:
            raise KdataError("critic: this text critic embeds the text; give the pool the scores came from")
    if len(texts) != table.num_rows:
        raise RuntimeError(f"critic: {len(texts)} texts for {table.num_rows} rows")
    from kdata.models.text_embedder import embed_texts

    emb = _embedder(embedder, device=device, checksum=embedder_checksum)
    if not texts:  # no row: the width (the embedder's) from one blank text, so the names still match
        E = embed_texts(emb, [""])[:0].astype(np.float64)
    else:
        E = embed_texts(emb, [t or "" for t in texts], batch_size=batch_size).astype(np.float64)
    return np.concatenate([X, E], axis=1), names + [f"emb_{j}" for j in range(E.shape[1])]
