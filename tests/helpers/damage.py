"""Ways to damage a file on disk, for the tests of what kdata does with damaged cache entries."""

from __future__ import annotations

import pyarrow.parquet as pq


def garbage_inside(path, *, n: int = 256, key: int = 0xA5) -> None:
    """Flip ``n`` bytes in the middle of ``path``: same size, footer intact (only a checksum can tell)."""
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid:mid + n] = bytes((b ^ key) for b in data[mid:mid + n])
    path.write_bytes(bytes(data))


def rewrite_parquet(path, change) -> None:
    """Replace the Parquet file ``path`` by ``change(its table)``: valid Parquet, other content."""
    pq.write_table(change(pq.read_table(path)), path)
