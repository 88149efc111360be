"""Checks of a pool's size and sample ids made before scoring, from the ids alone.

``--budget`` against the pool's size and the uniqueness of its sample ids need no model: each unit
gives its ids without reading a payload (a Parquet file its ``sample_id`` column, a tar shard its
headers, a folder its listing), so a bad budget or a repeated id is one line before any unit is
scored. Memory stays bounded for pools of millions of rows: ids are hashed to 64 bits a chunk at a
time and only the hashes are held; a repeated hash is confirmed on the ids themselves.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd
import pyarrow as pa

from kdata.core.errors import KdataError
from kdata.core.warn import warn
from kdata.pools.spec import Pool
from kdata.selection.run import parse_budget

HASH_CHUNK = 1 << 20  # ids hashed at a time (their Python strings are the transient cost)


def id_hashes(ids: pa.Array) -> np.ndarray:
    """A 64-bit hash of each id (nulls hash alike; the readers refuse null ids themselves)."""
    parts = [pd.util.hash_array(ids.slice(i, HASH_CHUNK).to_numpy(zero_copy_only=False).astype(object))
             for i in range(0, len(ids), HASH_CHUNK)]
    return np.concatenate(parts) if parts else np.empty(0, np.uint64)


def check_unique_pool_ids(pool: Pool) -> int | None:
    """The number of rows of ``pool`` (every row a sample, readable or not, as scoring counts ``n_in``);
    one line naming the pool, the id and the units holding it when a sample id occurs twice. None when a
    unit cannot give its ids: scoring quarantines that unit with its error, and the checks run after it."""
    hashes, odd = [], {}
    try:
        for unit in pool.units:
            ids = unit.sample_ids()
            hashes.append(id_hashes(ids))
            _not_nfc(ids, odd)
    except KdataError:
        return None
    every = np.concatenate(hashes) if hashes else np.empty(0, np.uint64)
    if odd:
        _warn_look_alikes(odd, every, where=pool.spec)
    values, counts = np.unique(every, return_counts=True)
    repeated = values[counts > 1]
    del every, values, counts
    if repeated.size:
        _raise_on_repeat(pool, hashes, repeated)
    return int(sum(len(h) for h in hashes))


def _not_nfc(ids: pa.Array, odd: dict) -> None:
    """Add to ``odd`` (NFC form → id) the ids not in Unicode normal form C: of two distinct ids that are
    the same text in another form (``café`` as one code point or as ``e`` + a combining accent: file
    names from macOS and Linux mixed), at least one is. Only non-ASCII ids are looked at, and only the
    rare non-NFC ones are held."""
    import unicodedata

    import pyarrow.compute as pc

    if not (pa.types.is_string(ids.type) or pa.types.is_large_string(ids.type)):
        return
    for sid in ids.filter(pc.invert(pc.fill_null(pc.string_is_ascii(ids), True))).to_pylist():
        if not unicodedata.is_normalized("NFC", sid):
            odd.setdefault(unicodedata.normalize("NFC", sid), sid)


def _warn_look_alikes(odd: dict, every: np.ndarray, *, where: str) -> None:
    """One warning when a non-NFC id's NFC form is an id of the pool too (found among the id hashes):
    two samples to kdata and to a join, printed alike."""
    forms = list(odd)
    present = np.isin(id_hashes(pa.array(forms, pa.string())), every)
    if present.any():
        nfc = forms[int(np.flatnonzero(present)[0])]
        warn(f"{where}: sample ids {ascii(nfc)} and {ascii(odd[nfc])} differ only in their Unicode form (NFC/NFD); "
             "they are kept as two samples, but print alike", stacklevel=3)


def _raise_on_repeat(pool: Pool, hashes: list[np.ndarray], repeated: np.ndarray) -> None:
    """Confirm a repeated hash on the ids (a collision of distinct ids passes) and name the first id."""
    seen: Counter = Counter()
    where: dict[str, list[str]] = {}
    for unit, h in zip(pool.units, hashes):
        rows = np.flatnonzero(np.isin(h, repeated))
        if not rows.size:
            continue
        ids = unit.sample_ids().take(pa.array(rows, pa.int64())).to_pylist()
        for sid in ids:
            seen[sid] += 1
            names = where.setdefault(sid, [])
            if unit.name not in names:
                names.append(unit.name)
    dup = next((sid for sid, n in seen.items() if n > 1), None)
    if dup is None:
        return
    units = where[dup]
    inside = f" (in {units[0]})" if len(units) == 1 else f" (in {units[0]} and {units[1]})"
    raise KdataError(f"{pool.spec}: sample_id '{dup}' occurs more than once in the pool{inside}; "
                     "sample ids must be unique")


def check_budget_fits(budget: str, candidates: int | None, *, where: str) -> int | None:
    """``--budget`` as rows of ``candidates``; one line when the pool is empty or smaller than a count
    (None candidates: not known before scoring, checked after it)."""
    if candidates is None:
        return None
    if candidates == 0:
        raise KdataError(f"{where}: the pool is empty")
    return parse_budget(budget, candidates)
