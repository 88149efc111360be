"""``kdata_metadata``: a shard's ``kdata`` schema metadata entry, or one line naming the file when it is
not a JSON object (it raised JSONDecodeError or AttributeError, exit 1, no file name)."""

from __future__ import annotations

import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kdata.core.errors import KdataError
from kdata.dataset.manifest_checks import shard_metadata
from kdata.dataset.schema import kdata_metadata


def _file(tmp_path, raw: bytes | None):
    t = pa.table({"sample_id": ["a"]})
    if raw is not None:
        t = t.replace_schema_metadata({b"kdata": raw})
    path = tmp_path / "shard.parquet"
    pq.write_table(t, path)
    return path


@pytest.mark.parametrize("raw,problem", [
    (b"{not json", "is not valid JSON"),
    (b"\xff\xfe", "is not valid JSON"),  # not UTF-8
    (b"[" * 100_000, "is not valid JSON"),  # nested past Python's parser
    (b"[1, 2]", "is not a JSON object (a list)"),
    (b'"text"', "is not a JSON object (a str)"),
])
def test_a_malformed_entry_is_one_line_naming_the_file(tmp_path, raw, problem):
    path = _file(tmp_path, raw)
    with pytest.raises(KdataError, match=re.escape(f"{path}: schema metadata 'kdata' {problem}")) as exc:
        kdata_metadata(pq.read_schema(path), where=str(path))
    assert str(exc.value).startswith(str(path)) and "\n" not in str(exc.value) and exc.value.exit_code == 2
    with pytest.raises(KdataError, match=re.escape(f"{path}: schema metadata 'kdata' {problem}")):  # the integrity checks' reader names the shard too
        shard_metadata(path)


def test_absent_and_valid_entries_read_as_before(tmp_path):
    assert kdata_metadata(pq.read_schema(_file(tmp_path, None)), where="x") == {}
    assert kdata_metadata(pq.read_schema(_file(tmp_path, b'{"topk": 5}'))) == {"topk": 5}
    assert shard_metadata(tmp_path / "absent.parquet") is None  # unreadable: the shard checks report it
