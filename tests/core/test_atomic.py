"""kdata.core.atomic: a killed writer's temporary files are removed by the next owner of the path."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from kdata.core.atomic import atomic_path, drop_partial_writes


def test_a_killed_writers_temporary_file_is_dropped_and_nothing_else(tmp_path):
    target = tmp_path / "entry.quarantine.json"
    code = ("import os, sys, time\nfrom kdata.core.atomic import atomic_path\n"
            f"with atomic_path({str(target)!r}) as tmp:\n"
            "    tmp.write_text('half')\n    print(tmp, flush=True)\n    time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    tmp = proc.stdout.readline().strip()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    assert os.path.exists(tmp) and os.path.basename(tmp).startswith(".entry.quarantine.json.") and tmp.endswith(".tmp")
    keep = [tmp_path / "entry.parquet", tmp_path / ".other.json.abc.tmp", tmp_path / ".entry.quarantine.json"]
    for p in keep:
        p.write_text("x")
    drop_partial_writes(tmp_path / "entry.parquet", target)
    assert not os.path.exists(tmp) and all(p.exists() for p in keep) and not target.exists()
    with atomic_path(target) as t:  # the next writer completes as usual
        t.write_text("whole")
    assert target.read_text() == "whole"


def test_parquet_dictionary_encoding_only_where_values_repeat(tmp_path):
    """Labels, classes and ids are dictionary-encoded; floats, payloads and embeddings are not
    (trying it on them first doubles the write time of a scores unit)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from kdata.core.atomic import write_parquet

    table = pa.table({"label": ["cat", "dog"] * 50, "idx": pa.array(range(100), pa.int32()),
                      "kl": pa.array([0.5] * 100, pa.float32()), "image": pa.array([b"\xff\xd8"] * 100),
                      "embedding": pa.array([[0.25, 0.5]] * 100, pa.list_(pa.float16()))})
    write_parquet(tmp_path / "t.parquet", table)
    meta = pq.ParquetFile(tmp_path / "t.parquet").metadata.row_group(0)
    dictionary = {meta.column(i).path_in_schema: meta.column(i).has_dictionary_page for i in range(meta.num_columns)}
    assert dictionary["label"] and dictionary["idx"]
    assert not dictionary["kl"] and not dictionary["image"] and not any(v for k, v in dictionary.items()
                                                                          if k.startswith("embedding"))
    assert pq.read_table(tmp_path / "t.parquet").equals(table)


def test_write_json_refuses_nan_and_infinity(tmp_path):
    """NaN/Infinity are not JSON: a bug that would record one fails loudly instead of writing a file
    that strict readers (``jq``, browsers, other languages) refuse; the old file is kept."""
    import json
    import math

    import pytest

    from kdata.core.atomic import write_json

    path = tmp_path / "manifest.json"
    write_json(path, {"critic_threshold": 0.5, "none": None})
    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
            write_json(path, {"hard": {"critic_threshold": bad}})
    assert json.loads(path.read_text()) == {"critic_threshold": 0.5, "none": None}
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]  # no temporary file left behind
