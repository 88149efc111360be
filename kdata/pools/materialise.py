"""Built-in pools are materialised once as Parquet shards in the cache, then read like any pool.

``materialise`` is the one way to do it: under the cache entry's lock (a second process waits
and reuses the first one's files, never writes them too), each shard written atomically, and
``_SUCCESS`` last, so an entry without it is an interrupted write that the next taker redoes.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pyarrow as pa

from kdata.core.atomic import write_bytes, write_parquet
from kdata.core.lock import exclusive

SUCCESS = "_SUCCESS"


def materialise(root: Path, build: Callable[[], pa.Table], *, n_units: int) -> Path:
    """Write ``build()`` as ``n_units`` shards ``part-NNNNN.parquet`` under ``root`` once; return ``root``."""
    done = root / SUCCESS
    if done.exists():
        return root
    with exclusive(root, wait=True):
        if done.exists():
            return root
        table = build()
        step = -(-table.num_rows // n_units)
        for i in range(n_units):
            write_parquet(root / f"part-{i:05d}.parquet", table.slice(i * step, step), row_group_size=512)
        write_bytes(done, b"ok\n")
    return root
