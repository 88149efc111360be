"""Diversity: spread the budget over embedding clusters (``--balance cluster``) or domains.

``selection.select`` calls ``groups_for`` on the alive candidates and splits the budget evenly
over the groups (``selection.top_k``), each group taking its best-ranked rows. Clusters come from
spherical k-means (faiss) over the L2-normalised teacher embeddings of the candidates, so the
budget covers the whole embedding space instead of piling into the densest, easiest region.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from kdata.core.errors import KdataError
from kdata.pools.label_column import unit_column

CLUSTER_ROWS = 50  # aim for about this many candidates per cluster
MAX_CLUSTERS = 256


def n_clusters_for(n: int) -> int:
    """Default cluster count: ~``CLUSTER_ROWS`` candidates per cluster, between 2 and 256."""
    return int(min(MAX_CLUSTERS, max(2, round(n / CLUSTER_ROWS))))


def cluster_groups(embeddings: np.ndarray, *, seed: int, k: int | None = None) -> np.ndarray:
    """Spherical k-means cluster id of each row (faiss; GPU when the probe succeeds)."""
    from kdata.core.vectors import l2_normalize, spherical_kmeans

    x = l2_normalize(embeddings)
    if len(x) < 2:
        return np.zeros(len(x), dtype=np.int64)
    _, assign = spherical_kmeans(x, k or n_clusters_for(len(x)), seed=seed)
    return assign


def groups_for(balance: str, view, cand: np.ndarray, *, seed: int) -> np.ndarray:
    """Group label of each candidate row ``cand`` for ``balance`` = ``cluster`` or ``domain``."""
    if balance == "cluster":
        if not view.has("embedding"):
            raise KdataError("--balance cluster needs model embeddings; the scores have no 'embedding' column "
                             "(the teacher gives no penultimate features)")
        return cluster_groups(view.col("embedding")[cand], seed=seed)
    if balance == "domain":
        if not view.has("domain"):
            raise KdataError("--balance domain needs a 'domain' column in the pool")
        dom = view.col("domain")[cand]
        if len(dom) and all(d is None for d in dom):
            raise KdataError("--balance domain: no candidate has a domain (the pool's 'domain' column is empty); "
                             "give the pool a domain per row, or balance by class")
        return np.array(["" if d is None else str(d) for d in dom], dtype=object)
    raise KdataError(f"--balance '{balance}': expected none, class, cluster or domain")


def unit_domains(unit) -> tuple[pa.Array, pa.Array]:
    """(sample ids, ``domain`` as strings, null where none) of one pool unit, without reading its
    payloads where the reader can address columns (``kdata.pools.label_column.unit_column``)."""
    return unit_column(unit, "domain")


def attach_domain(scores: pa.Table, pool) -> pa.Table:
    """The scores table plus the pool's ``domain`` column (``unit_domains``, unit by unit), for domain balance."""
    if "domain" in scores.column_names:
        return scores
    ids, doms = [], []
    for unit in pool.units:
        i, d = unit_domains(unit)
        ids.append(i)
        doms.append(d)
    if not ids:  # --scores without --pool: the file is the only place a domain can come from
        raise KdataError("--balance domain needs a 'domain' column: in the pool, or in the --scores file when "
                         "there is no --pool")
    all_ids, all_dom = pa.concat_arrays(ids), pa.concat_arrays(doms)
    pos = pc.index_in(scores.column("sample_id"), value_set=all_ids)
    return scores.append_column("domain", pc.take(all_dom, pos))
