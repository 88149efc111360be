"""What a scoring run holds for one unit while it is scored: ids, labels, row numbers, results.

Each batch's results are copied into arrays of the unit's row count, made at its first scored
batch. Kept as the batch's own small arrays until the unit was written, they were cut out of the
holes that the forward pass's transient buffers (tens of MB on a CPU) leave in glibc's heap, so
the next batch's buffers no longer fitted and the heap grew with every batch while the bytes in
use stayed flat (one unit of 10,000 images: heap 170 → 310 MB; copied, it ends where it began).
Once the unit is written, ``drop_rows`` lets go of everything per row: a run keeps each unit's
state (its lock, its decoding processes, its quarantine) until it ends.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class UnitState:
    """One unit of a run: what was read and scored so far, and where its result goes."""

    index: int
    name: str
    lock: object | None = None  # kdata.core.lock.Lock on the unit's cache entry while it is scored
    n_in: int = 0
    ids: list = field(default_factory=list)
    label_idx: list = field(default_factory=list)
    rows: list = field(default_factory=list)  # unit row numbers of scored rows, one array per batch
    chunks: dict = field(default_factory=dict)  # result name → array of n_in rows, the first ``scored`` filled
    scored: int = 0
    quarantined: list = field(default_factory=list)
    empty: int = 0  # rows with no payload at all (and no reader error)
    pids: set = field(default_factory=set)  # processes that decoded this unit's rows

    def add_results(self, results: dict[str, np.ndarray]) -> None:
        """Copy one batch's results (same rows in each) after the rows scored so far."""
        n = 0
        for k, a in results.items():
            if k not in self.chunks:
                self.chunks[k] = np.empty((max(self.n_in, len(a)), *a.shape[1:]), dtype=a.dtype)
            self.chunks[k][self.scored:self.scored + len(a)] = a
            n = len(a)
        self.scored += n

    def results(self) -> dict[str, list[np.ndarray]]:
        """The scored rows' results, one array per name (views, not copies)."""
        return {k: [a[:self.scored]] for k, a in self.chunks.items()}

    def drop_rows(self) -> None:
        """Let go of the per-row state once the unit is written (or its write failed)."""
        self.ids, self.label_idx, self.rows, self.chunks, self.scored = [], [], [], {}, 0
