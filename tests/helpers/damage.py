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


def wreck_chunks(path, column: str, groups) -> None:
    """Overwrite the pages of ``column``'s chunk (a leaf path such as ``image`` or
    ``teacher_topk_prob.list.element``) in each row group of ``groups`` with 0xFF bytes: the footer
    stays intact, reading those chunks fails and the rest of the file reads."""
    meta = pq.read_metadata(path)
    data = bytearray(path.read_bytes())
    for g in groups:
        rg = meta.row_group(int(g))
        chunk = next(rg.column(j) for j in range(rg.num_columns) if rg.column(j).path_in_schema == column)
        start = chunk.dictionary_page_offset or chunk.data_page_offset
        data[start:start + chunk.total_compressed_size] = b"\xff" * chunk.total_compressed_size
    path.write_bytes(bytes(data))
