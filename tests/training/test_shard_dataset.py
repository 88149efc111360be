"""The shard dataset streams row group by row group and deals row groups across workers."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from torch.utils.data import DataLoader

from kdata.pools import builtin
from kdata.dataset.schema import SHARD_SCHEMA, conform, with_kdata_metadata
from kdata.core.errors import KdataError
from kdata.models.images import worker_context
from kdata.training.shard_dataset import ShardDataset

INPUT = dict(input_size=(1, 32, 32), mean=(0.5,), std=(0.5,))


def _shard(path, n: int, *, row_group: int, k: int = 3, seed: int = 0):
    """A real curated-shard Parquet file of ``n`` digit images in row groups of ``row_group`` rows."""
    rng = np.random.default_rng(seed)
    arrs, ys = builtin.split_arrays("test")
    idx = rng.integers(0, len(ys), n)
    topk_idx = np.stack([np.roll(np.arange(10), -int(ys[i]))[:k] for i in idx]).astype(np.int32)
    logits = np.sort(rng.normal(0, 3, (n, k)).astype(np.float32), axis=1)[:, ::-1].copy()
    probs = np.exp(logits) / (np.exp(logits).sum(1, keepdims=True) + 1.0)
    t = pa.table({
        "sample_id": [f"s{i:05d}" for i in range(n)],
        "image": [builtin.png_bytes(arrs[i]) for i in idx],
        "label_idx": pa.array([int(ys[i]) if j % 5 else -1 for j, i in enumerate(idx)], pa.int32()),
        "teacher_topk_idx": pa.array(topk_idx.tolist(), pa.list_(pa.int32())),
        "teacher_topk_logit": pa.array(logits.tolist(), pa.list_(pa.float32())),
        "teacher_topk_prob": pa.array(probs.astype(np.float32).tolist(), pa.list_(pa.float32())),
        "student_pred": pa.array(ys[idx].astype(np.int32)),
    })
    t = conform(t, SHARD_SCHEMA)
    t = t.replace_schema_metadata(with_kdata_metadata(t.schema, {"temperature": 1.0,
                                                                "class_names": builtin.CLASS_NAMES}).metadata)
    pq.write_table(t, path, row_group_size=row_group)
    return t


def test_streams_by_row_group_without_reading_everything(tmp_path):
    _shard(tmp_path / "a.parquet", 400, row_group=10)  # 40 row groups
    ds = ShardDataset(tmp_path / "a.parquet", shuffle=True, seed=1, **INPUT)
    assert len(ds.groups) == 40 and len(ds) == 400
    before = ds.row_groups_read
    loader = DataLoader(ds, batch_size=8, num_workers=0)
    it = iter(loader)
    batches = [next(it) for _ in range(3)]  # 24 rows
    # three batches of 8 need at most three row groups of 10 rows, not the 40 of the file
    assert 1 <= ds.row_groups_read - before <= 3
    x, idx, logit, prob, y = batches[0]
    assert x.shape == (8, 1, 32, 32) and x.dtype == torch.float32
    assert idx.shape == (8, 3) and idx.dtype == torch.int64
    assert logit.shape == prob.shape == (8, 3) and y.dtype == torch.int64
    assert float(x.min()) >= -1.0 and float(x.max()) <= 1.0


def test_every_row_exactly_once_across_workers_and_epochs_reshuffle(tmp_path):
    table = _shard(tmp_path / "a.parquet", 90, row_group=7)
    _shard(tmp_path / "b.parquet", 50, row_group=7, seed=1)
    ds = ShardDataset([tmp_path / "a.parquet", tmp_path / "b.parquet"], shuffle=True, seed=3, **INPUT)
    assert len(ds) == 140

    def labels_of(epoch, workers):
        ds.set_epoch(epoch)
        ys = [b[4] for b in DataLoader(ds, batch_size=16, num_workers=workers,
                                       multiprocessing_context=worker_context(workers))]
        return torch.cat(ys).tolist()

    e0 = labels_of(0, 2)
    assert len(e0) == 140
    # the same multiset of labels as the files, with two worker processes sharing the row groups
    b = pq.read_table(tmp_path / "b.parquet")
    want = sorted(table.column("label_idx").to_pylist() + b.column("label_idx").to_pylist())
    assert sorted(e0) == want
    assert labels_of(1, 0) != labels_of(0, 0)  # another epoch, another order
    assert labels_of(0, 0) == labels_of(0, 0)  # seeded


def test_unshuffled_order_matches_the_file(tmp_path):
    table = _shard(tmp_path / "a.parquet", 30, row_group=4)
    ds = ShardDataset(tmp_path / "a.parquet", shuffle=False, **INPUT)
    got = [int(item[4]) for item in ds]
    assert got == table.column("label_idx").to_pylist()
    first = next(iter(ds))
    assert first[1].tolist() == table.column("teacher_topk_idx")[0].as_py()


def test_reads_a_curated_dataset_directory(demo_run):
    ds = ShardDataset(demo_run, shuffle=False, **INPUT)
    assert len(ds) == 437 and ds.temperature == 1.0 and ds.class_names == builtin.CLASS_NAMES
    assert ds.topk == 5


def test_bad_input_is_one_clear_error(tmp_path):
    with pytest.raises(KdataError, match="not found"):
        ShardDataset(tmp_path / "missing", **INPUT)
    pq.write_table(pa.table({"sample_id": ["a"], "image": [b"x"]}), tmp_path / "bad.parquet")
    with pytest.raises(KdataError, match="bad.parquet: missing required column"):
        ShardDataset(tmp_path / "bad.parquet", **INPUT)


def _epoch_batches(ds, batch_size, workers):
    loader = DataLoader(ds.batches(batch_size), batch_size=None, num_workers=workers,
                        multiprocessing_context=worker_context(workers))
    return list(loader)


@pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")  # 3 workers on a 2-core machine
def test_an_epochs_batches_are_one_seeded_order_whatever_the_workers(tmp_path):
    """Batches are planned in the main process from one order (row groups shuffled, rows permuted per row
    group by their own generator); workers only decode them. So a batch holds the same rows with 0, 2 or 3
    workers, an epoch is ceil(n / B) batches, and every row is in exactly one of them."""
    a = _shard(tmp_path / "a.parquet", 90, row_group=7)
    b = _shard(tmp_path / "b.parquet", 50, row_group=7, seed=1)
    ds = ShardDataset([tmp_path / "a.parquet", tmp_path / "b.parquet"], shuffle=True, seed=3, num_classes=10, **INPUT)
    ds.set_epoch(1)
    runs = {w: _epoch_batches(ds, 16, w) for w in (0, 2, 3)}
    assert [len(bt.y) for bt in runs[0]] == [16] * 8 + [12]
    for w in (2, 3):
        assert len(runs[w]) == 9
        for b0, bw in zip(runs[0], runs[w]):
            assert all(torch.equal(u, v) for u, v in zip(b0[:5], bw[:5])), w
    logits = sorted(map(tuple, torch.cat([bt.logit for bt in runs[0]]).tolist()))
    want = sorted(tuple(r) for r in a.column("teacher_topk_logit").to_pylist() + b.column("teacher_topk_logit").to_pylist())
    assert logits == pytest.approx(want)
    # the rows one by one come in the same order
    assert torch.equal(torch.cat([bt.y for bt in runs[0]]), torch.stack([row[4] for row in ds]))
    ds.set_epoch(2)
    assert not torch.equal(torch.cat([bt.y for bt in _epoch_batches(ds, 16, 0)]), torch.cat([bt.y for bt in runs[0]]))


def test_soft_labels_are_checked_as_each_row_group_is_read(tmp_path):
    t = _shard(tmp_path / "a.parquet", 30, row_group=10)
    probs = t.column("teacher_topk_prob").to_pylist()
    probs[14] = [float("nan")] * 3
    i = t.schema.get_field_index("teacher_topk_prob")
    pq.write_table(t.set_column(i, t.schema.field(i), pa.array(probs, t.schema.field(i).type)), tmp_path / "a.parquet",
                   row_group_size=10)
    ds = ShardDataset(tmp_path / "a.parquet", shuffle=False, num_classes=10, **INPUT)
    batches = _epoch_batches(ds, 8, 2)  # a worker hands the problem back, it does not raise it
    bad = [bt.error for bt in batches if bt.error]
    assert bad and bad[0] == (f"{tmp_path / 'a.parquet'}: column 'teacher_topk_prob' holds non-finite "
                              "probabilities (row 14)")
    with pytest.raises(KdataError, match=r"a.parquet: column 'teacher_topk_prob' holds non-finite probabilities"):
        list(ds)
    # the class indices are bounded by the student's classes when given
    with pytest.raises(KdataError, match=r"column 'teacher_topk_idx' holds class indices outside \[0, 2\)"):
        list(ShardDataset(tmp_path / "a.parquet", shuffle=False, num_classes=2, **INPUT))
