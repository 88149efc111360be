"""``--scores FILE --pool P``: the pool's web labels and the file's classes, reconciled before scoring.

The shards' ``label`` comes from the pool and ``label_idx`` from the file; every label statistic (the
teacher's belief in the label, which the default recipe's label stage cuts on) reads ``label_idx``.
So the two must agree: with the classes named (the file's ``kdata`` metadata ``class_names``, or else
the pool's own class names — an image folder's sorted folder names, as torchvision's ``ImageFolder``
orders them — when there are as many as the file has classes), a pool label names its index; a file
without ``label_idx`` gets it from the pool, and a file whose ``label_idx`` contradicts the pool's label
is refused in one line naming the row. Labels compare in Unicode NFC (a folder written as NFD, as macOS
does, names the same class).
"""

from __future__ import annotations

import unicodedata

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from kdata.core.errors import KdataError
from kdata.core.warn import warn
from kdata.pools.label_column import labels_for


def nfc(text: str | None) -> str | None:
    return None if text is None else unicodedata.normalize("NFC", text)


def pool_label_resolver(pool, *, where: str):
    """The ``labels`` callable ``kdata.scoring.byo.load_scores`` takes, for ``pool`` (None without one)."""
    if pool is None or not pool.units:
        return None

    def resolve(ids: pa.Array, class_names: list[str], declared: bool, C: int, file_label):
        web = labels_for(ids, pool)
        if web.null_count == len(web):
            return (file_label if file_label is not None else np.full(len(web), -1, np.int32)), class_names
        if not declared:
            names = list(pool.class_names or [])
            if len(names) != C:
                if file_label is None:
                    warn(f"{where}: the predictions name no classes (no class_names in the file's "
                         f"kdata metadata) and the pool has {len(names) or 'no'} class names for its {C} classes, "
                         "so the pool's labels cannot be given as class indices: the label statistics are "
                         "skipped", note=True)
                return (file_label if file_label is not None else np.full(len(web), -1, np.int32)), class_names
            warn(f"{where}: the predictions name no classes; class i is taken to be the pool's "
                 f"i-th class name ({', '.join(names[:4])}{', …' if C > 4 else ''}: sorted, as torchvision's "
                 "ImageFolder orders them) — put class_names in the file's kdata metadata if your model orders "
                 "them otherwise", note=True)
            class_names = names
        idx = _indices(web, class_names)
        if file_label is None:
            return idx, class_names
        file_label = np.asarray(file_label, np.int32)
        bad = np.flatnonzero((file_label >= 0) & (idx >= 0) & (file_label != idx))
        if len(bad):
            i = int(bad[0])
            raise KdataError(f"{where}: row {i} (sample_id '{ids[i].as_py()}'): label_idx {file_label[i]} "
                             f"({class_names[file_label[i]]!r}) but the pool's label is {web[i].as_py()!r} (class "
                             f"{idx[i]}); {len(bad)} row(s) disagree — fix the file's label_idx or its class_names, "
                             "or drop label_idx to take the pool's labels")
        return np.where(file_label >= 0, file_label, idx).astype(np.int32), class_names

    return resolve


def _indices(web: pa.Array, class_names: list[str]) -> np.ndarray:
    """Class index of each label (−1: none, or not a class), each distinct label looked up once."""
    index = {nfc(c): i for i, c in enumerate(class_names)}
    enc = pc.dictionary_encode(web)
    lookup = np.array([index.get(nfc(v), -1) for v in enc.dictionary.to_pylist()] + [-1], np.int32)
    codes = pc.fill_null(enc.indices, len(enc.dictionary)).to_numpy(zero_copy_only=False)
    return lookup[codes]
