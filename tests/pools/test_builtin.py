"""The embedded default pool and the built-in models."""

import io

import numpy as np
from PIL import Image

from kdata.pools import builtin
from kdata.models.builtin import accuracy
from kdata.dataset.schema import validate_pool


def test_digits_web_is_seeded_and_shaped_like_web_data():
    pool, truth = builtin.digits_web(seed=0), builtin.digits_web_truth(seed=0)
    validate_pool(pool.schema, where="builtin")
    assert pool.num_rows == truth.num_rows == 1457
    assert pool.column("sample_id").to_pylist() == truth.column("sample_id").to_pylist()
    assert len(set(pool.column("sample_id").to_pylist())) == pool.num_rows
    kinds = set(truth.column("truth").to_pylist())
    assert kinds == {"clean", "label_noise", "shift", "junk", "near_dup", "exact_dup"}
    # ground truth never rides along in the pool
    assert not {"truth", "true_label", "dup_of"} & set(pool.column_names)
    im = Image.open(io.BytesIO(pool.column("image")[0].as_py()))
    assert im.size == (32, 32) and im.mode == "L"
    # exact duplicates are byte-identical to their original
    t = truth.to_pandas()
    images = dict(zip(pool.column("sample_id").to_pylist(), pool.column("image").to_pylist()))
    ex = t[t.truth == "exact_dup"].iloc[0]
    assert images[ex.sample_id] == images[ex.dup_of]
    # label noise: web label differs from the true one
    labels = dict(zip(pool.column("sample_id").to_pylist(), pool.column("label").to_pylist()))
    noisy = t[t.truth == "label_noise"]
    assert all(labels[s] != str(y) for s, y in zip(noisy.sample_id, noisy.true_label))


def test_splits_are_disjoint():
    _, _, splits = builtin._digits()
    assert not set(splits["train"]) & set(splits["test"])
    assert not set(splits["train"]) & set(splits["pool"])
    assert not set(splits["test"]) & set(splits["pool"])
    assert set(splits["student"]) <= set(splits["train"])


def test_builtin_models_teacher_much_better_than_student(builtin_models):
    teacher, student = builtin_models
    arrs, ys = builtin.split_arrays("test")
    t_acc, s_acc = accuracy(teacher, arrs, ys), accuracy(student, arrs, ys)
    assert t_acc > 0.93
    assert 0.5 < s_acc < t_acc - 0.05
    assert teacher.checksum.startswith("sha256:") and teacher.checksum != student.checksum


def test_materialise_builds_once_when_two_threads_race(tmp_path):
    """Two takers of one cache entry at once: the second waits on the lock and reuses the shards."""
    import threading
    import time

    import pyarrow as pa

    from kdata.pools.materialise import materialise

    builds = []

    def build():
        builds.append(1)
        time.sleep(0.2)
        return pa.table({"x": list(range(10))})

    root = tmp_path / "entry"
    threads = [threading.Thread(target=materialise, args=(root, build), kwargs={"n_units": 2}) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(builds) == 1
    assert sorted(p.name for p in root.iterdir()) == ["_SUCCESS", "part-00000.parquet", "part-00001.parquet"]
