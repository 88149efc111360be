"""The curated shards as the card and ``kdata inspect`` read them: every column but the payloads.

A summary needs the scores, predictions and soft labels of every kept row, but the ``image`` /
``text`` payload of a few rows only (the card's thumbnails, a handful of example texts, one
``--sample-id``). ``ShardFiles`` reads the shards' footers, loads the other columns, and fetches a
payload by row position, reading only the row groups that hold the wanted rows: a 100 GB image set
is summarised in the memory of its scores, not of its images.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from kdata.core.errors import KdataError
from kdata.dataset.shard_rows import non_null_rows

__all__ = ["PAYLOADS", "ShardFiles"]

PAYLOADS = ("image", "text")  # the columns read only for the rows a summary shows


@dataclass
class ShardFiles:
    """The shards of a dataset, footers read (no file left open: a dataset may have thousands):
    ``schema`` (every column, payloads included, unified like ``pa.concat_tables(promote_options="default")``)
    and the first global row of each file."""

    paths: list[Path]
    metas: list[pq.FileMetaData]
    schemas: list[pa.Schema]
    schema: pa.Schema
    starts: np.ndarray  # global row position of each file's first row, then the total

    @classmethod
    def open(cls, paths: list[Path]) -> ShardFiles:
        """Read the footers (raises ``OSError`` / ``pa.ArrowException`` for an unreadable file)."""
        footers = [_footer(p) for p in paths]
        metas, schemas = [m for m, _ in footers], [s for _, s in footers]
        schema = pa.unify_schemas(schemas, promote_options="default") if schemas else pa.schema([])
        starts = np.concatenate([[0], np.cumsum([m.num_rows for m in metas])]).astype(np.int64)
        return cls(paths=list(paths), metas=metas, schemas=schemas, schema=schema, starts=starts)

    def scalars(self) -> pa.Table | None:
        """Every column but ``PAYLOADS``, all shards concatenated in order (None without shards)."""
        tables = [pq.read_table(p, columns=[c for c in s.names if c not in PAYLOADS])
                  for p, s in zip(self.paths, self.schemas)]
        return pa.concat_tables(tables, promote_options="default") if tables else None

    def has_values(self, name: str) -> bool:
        """Column ``name`` exists and holds a non-null value (``non_null_rows``: row-group statistics,
        a row group without them read, that column alone)."""
        try:
            return non_null_rows(self.paths, name) > 0
        except (OSError, pa.ArrowException) as exc:
            raise KdataError(f"{self.paths[0].parent}: unreadable shard ({exc})") from None

    def take(self, name: str, positions) -> list:
        """The values of column ``name`` at global row ``positions`` (any order), as Python objects;
        only the row groups holding them are read, that column alone. None where a shard lacks it;
        ``KdataError`` naming the shard whose payload cannot be read."""
        pos = np.asarray(positions, np.int64).reshape(-1)
        out: list = [None] * len(pos)
        which = np.searchsorted(self.starts, pos, side="right") - 1
        for k in np.unique(which):
            if name not in self.schemas[k].names:
                continue
            at = np.flatnonzero(which == k)
            local = pos[at] - self.starts[k]
            sizes = [self.metas[k].row_group(g).num_rows for g in range(self.metas[k].num_row_groups)]
            ends = np.cumsum(sizes)
            group = np.searchsorted(ends, local, side="right")
            for g in np.unique(group):
                sel = group == g
                col = self._group(k, int(g), name)
                for i, v in zip(at[sel], col.take(pa.array(local[sel] - (ends[g] - sizes[g]), pa.int64())).to_pylist()):
                    out[i] = v
        return out

    def _group(self, k: int, g: int, name: str) -> pa.ChunkedArray:
        """Column ``name`` of row group ``g`` of shard ``k``."""
        try:
            with pq.ParquetFile(self.paths[k]) as f:
                return f.read_row_group(g, columns=[name]).column(name)
        except (OSError, pa.ArrowException) as exc:
            raise KdataError(f"{self.paths[k]}: unreadable shard ({exc})") from None


def _footer(path: Path) -> tuple[pq.FileMetaData, pa.Schema]:
    try:
        with pq.ParquetFile(path) as f:
            return f.metadata, f.schema_arrow
    except (OSError, pa.ArrowException):
        pq.read_table(path, columns=[])  # raises what ``pq.read_table`` says (the file's name with the cause)
        raise
