"""The training loader's decode workers start once per training set and serve every epoch, and
its batches are the ones an in-process loader plans for each epoch."""

from __future__ import annotations

import os

import pytest
import torch

from kdata.training.epoch_loader import EpochLoader, auto_workers
from kdata.training.shard_dataset import ShardDataset
from tests.training.test_shard_dataset import INPUT, _shard


def _rows(batches) -> torch.Tensor:
    return torch.cat([b.logit for b in batches])


@pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")  # 2 workers on a small machine
def test_workers_start_once_and_every_epoch_is_the_in_process_plan(tmp_path):
    _shard(tmp_path / "a.parquet", 90, row_group=7)
    _shard(tmp_path / "b.parquet", 50, row_group=7, seed=1)
    files = [tmp_path / "a.parquet", tmp_path / "b.parquet"]
    ds = ShardDataset(files, shuffle=True, seed=3, num_classes=10, **INPUT)
    reference = EpochLoader(ShardDataset(files, shuffle=True, seed=3, num_classes=10, **INPUT),
                            batch_size=16, workers=0, pin=False)
    loader = EpochLoader(ds, batch_size=16, workers=2, pin=False)
    try:
        pids, orders = [], []
        for epoch in (0, 1, 2):
            got = list(loader.epoch(epoch))
            want = list(reference.epoch(epoch))
            assert [len(b.y) for b in got] == [16] * 8 + [12]
            assert torch.equal(_rows(got), _rows(want)), epoch
            pids.append({b.pid for b in got})
            orders.append(_rows(got))
        assert pids[0] == pids[1] == pids[2] and len(pids[0]) == 2 and os.getpid() not in pids[0]
        assert not torch.equal(orders[0], orders[1])  # each epoch its own seeded order
        # an epoch stopped early (--steps) leaves the next one whole
        it = loader.epoch(3)
        next(it)
        del it
        assert torch.equal(_rows(loader.epoch(4)), _rows(reference.epoch(4)))
    finally:
        loader.close()
    assert all(b.pid == os.getpid() for b in reference.epoch(0))


def test_auto_uses_no_workers_for_small_sets():
    assert auto_workers("auto", 19_999) == 0
    assert auto_workers("auto", 20_000) >= 1
    assert auto_workers(3, 10) == 3
