"""The data contract: schemas, validation messages, conform, schema metadata."""

import pyarrow as pa
import pytest

from kdata.dataset.schema import POOL_SCHEMA, SHARD_SCHEMA, conform, kdata_metadata, validate_pool, validate_shard, with_kdata_metadata
from kdata.core.errors import KdataError


def test_pool_validation_names_file_and_column():
    t = pa.table({"image": [b"x"]})
    with pytest.raises(KdataError, match=r"pool.parquet: missing required column 'sample_id'"):
        validate_pool(t.schema, where="pool.parquet")
    t = pa.table({"sample_id": ["a"], "image": [1]})
    with pytest.raises(KdataError, match=r"pool.parquet: column 'image' has type int64"):
        validate_pool(t.schema, where="pool.parquet")
    t = pa.table({"sample_id": ["a"], "label": ["x"], "content": ["some text"]})
    with pytest.raises(KdataError, match=r"pool.parquet: needs one payload column of image, text \(have: sample_id, "
                                         r"label, content\); rename the column that holds the payload"):
        validate_pool(t.schema, where="pool.parquet")


def test_pool_validation_accepts_large_types_and_extra_columns():
    t = pa.table({"sample_id": pa.array(["a"], pa.large_string()), "text": ["hi"], "whatever": [1]})
    validate_pool(t.schema, where="p")


def test_conform_fills_orders_and_keeps_score_columns():
    t = pa.table({"score_kd3": [0.5], "sample_id": ["a"], "image": [b"png"], "junk": [1]})
    out = conform(t, SHARD_SCHEMA)
    assert out.column_names[: len(SHARD_SCHEMA)] == SHARD_SCHEMA.names
    assert out.column_names[-1] == "score_kd3" and "junk" not in out.column_names
    assert out.column("teacher_topk_idx").null_count == 1
    validate_shard(out.schema, where="x")


def test_schema_metadata_roundtrip():
    s = with_kdata_metadata(POOL_SCHEMA, {"schema_version": "1.0", "temperature": 2.0})
    assert kdata_metadata(s) == {"schema_version": "1.0", "temperature": 2.0}
