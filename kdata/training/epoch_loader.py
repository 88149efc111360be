"""One DataLoader per training set: its decode workers start once and serve every epoch.

A loader built per epoch forks its workers again each epoch (seconds each, from a fork server that
preloads torch). Here the workers persist; the sampler hands them ``(epoch, batch)`` keys, and each
worker plans the epoch it is asked for from the seed and the epoch alone (``EpochBatches``), so
the batches are the ones an in-process loader makes, whatever ``--workers`` is.
"""

from __future__ import annotations

import os

from torch.utils.data import DataLoader, Sampler

from kdata.models.images import worker_context
from kdata.training.shard_dataset import EpochBatches, ShardDataset


def auto_workers(setting, n_rows: int) -> int:
    """Decode worker processes for training (they change the speed only, never the batches): ``auto``
    uses none under 20,000 rows (decoding thumbnails is cheaper than starting workers), else up to 4."""
    if setting != "auto":
        return int(setting)
    return 0 if n_rows < 20_000 else max(1, min(4, (os.cpu_count() or 2) - 1))


class _EpochKeys(Sampler):
    """Yields ``(epoch, i)`` for every batch i of the epoch set last (in the main process)."""

    def __init__(self, n: int):
        self.n, self.epoch = n, 0

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        return ((self.epoch, i) for i in range(self.n))


class EpochLoader:
    """``epoch(e)`` iterates epoch e's ``Batch``es of ``ds`` in order (``Batch.pid``: the process that
    decoded it). ``plan`` is the main process's copy of the batch plan (rows: ``plan.starts[-1]``)."""

    def __init__(self, ds: ShardDataset, *, batch_size: int, workers: int, pin: bool):
        self.ds, self.plan = ds, EpochBatches(ds, batch_size)
        self._keys = _EpochKeys(len(self.plan))
        self._loader = DataLoader(self.plan, batch_size=None, sampler=self._keys, num_workers=workers,
                                  pin_memory=pin, prefetch_factor=2 if workers else None,
                                  persistent_workers=workers > 0, multiprocessing_context=worker_context(workers))

    def epoch(self, epoch: int):
        self._keys.epoch = epoch
        if self._loader.num_workers == 0:
            self.plan.plan_epoch(epoch)
        return iter(self._loader)

    def close(self) -> None:
        """Stop the workers now (they would stop when the loader is collected)."""
        it = getattr(self._loader, "_iterator", None)
        if it is not None and self._loader.num_workers:
            it._shutdown_workers()  # noqa: SLF001  (torch offers no public way to stop persistent workers)
            self._loader._iterator = None
