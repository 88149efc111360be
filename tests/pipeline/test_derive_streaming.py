"""``kdata dedup`` streams the shards: features a row group at a time, the kept rows written a row group
at a time from the source shards, so Arrow never holds the dataset's payloads — and the dataset it
writes is the one the in-memory path wrote (same rows, order, ranks, decisions).

Real runs: a Parquet pool of noise PNGs with planted copies, selected with the built-in models; the
dedup runs in a fresh interpreter so Arrow's peak allocation (``MemoryPool.max_memory``) is its own.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kdata.cli import main
from kdata.dataset.writer import read_shards, verify
from kdata.dedup.features import file_features, payload_features
from tests.helpers.real_inputs import png_bytes

ROWS = 600
COPIES = 40


@pytest.fixture(scope="module")
def noisy(tmp_path_factory, builtin_models):
    """A selection of 600 noise PNGs (~16 KB each, 40 of them byte copies of others), shards of 16 rows
    in row groups of 8 (dedup writes shards of the source's size, so a row group of the output is
    small beside the dataset too)."""
    root = tmp_path_factory.mktemp("stream")
    rng = np.random.default_rng(0)
    imgs = [png_bytes(rng.integers(0, 256, (128, 128), dtype=np.uint8)) for _ in range(ROWS - COPIES)]
    imgs += [imgs[i] for i in rng.choice(len(imgs), COPIES, replace=False)]
    pq.write_table(pa.table({"sample_id": [f"n{i:04d}" for i in range(ROWS)], "image": imgs,
                             "label": [str(i % 10) for i in range(ROWS)]}), root / "pool.parquet")
    out = root / "sel"
    assert main(["select", "--pool", str(root / "pool.parquet"), "--method", "random", "--budget", "1.0",
                 "--dedup", "none", "--rows-per-shard", "16", "--row-group-rows", "8", "--out", str(out),
                 "--device", "cpu", "--quiet"]) == 0
    return out


def _dedup_in_fresh_process(src, out, level: str) -> int:
    """Run dedup_dataset in a new interpreter; Arrow's peak allocation there up to the data card (which
    pictures rows of the written dataset, its own business), in bytes: the features, the decisions and
    the shards written."""
    code = ("import pyarrow as pa\nimport kdata.pipeline.output as O\nfrom kdata.pipeline.derive import dedup_dataset\n"
            "seen, card = [], O.write_card\n"
            "def observed(*a, **k):\n    seen.append(pa.default_memory_pool().max_memory())\n    return card(*a, **k)\n"
            "O.write_card = observed\n"
            f"dedup_dataset({str(src)!r}, out={str(out)!r}, level={level!r}, device='cpu')\n"
            "print(seen[0])\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(r.stdout.strip().splitlines()[-1])


def _in_memory_dedup(src) -> tuple[pa.Table, list]:
    """What kdata dedup --level exact writes, computed the way it used to be: every shard in memory,
    rank order, the first row of each payload hash kept, ranks renumbered."""
    rows = read_shards(src)
    rows = rows.take(np.argsort(rows.column("rank").to_numpy(), kind="stable"))
    hashes, _ = payload_features(rows, pixels=False)
    first = {}
    keep = np.array([first.setdefault(h, i) == i for i, h in enumerate(hashes)])
    kept = rows.filter(pa.array(keep))
    kept = kept.set_column(kept.schema.get_field_index("rank"), "rank", pa.array(np.arange(kept.num_rows,
                                                                                            dtype=np.int32)))
    return kept, [None if k else f"duplicate_of:{rows.column('sample_id')[first[h]]}" for k, h in zip(keep, hashes)]


def test_dedup_holds_one_row_group_of_payloads_and_writes_what_the_in_memory_path_wrote(noisy, tmp_path):
    payload = sum(len(b) for b in read_shards(noisy).column("image").to_pylist())
    peak = _dedup_in_fresh_process(noisy, tmp_path / "exact", "exact")
    assert verify(tmp_path / "exact") == []
    assert peak < payload / 4, f"Arrow peaked at {peak:,} bytes for {payload:,} bytes of payloads"
    want, reasons = _in_memory_dedup(noisy)
    got = read_shards(tmp_path / "exact")
    assert got.equals(want.replace_schema_metadata(got.schema.metadata))
    dec = pq.read_table(tmp_path / "exact" / "decisions.parquet")
    assert dec.column("reason").to_pylist() == reasons and reasons.count(None) == ROWS - COPIES
    m = json.loads((tmp_path / "exact" / "manifest.json").read_text())
    assert [f["rows"] for f in m["files"]] == [16] * 35


def test_file_features_read_only_the_payload_columns(noisy, tmp_path):
    """Features come from the image/text columns alone: a shard whose other columns are unreadable
    still gives every row's hash and pixels, in the order ``at`` asks for."""
    from tests.helpers.damage import wreck_chunks

    paths = sorted((noisy / "data").glob("*.parquet"))
    copy = tmp_path / "shard.parquet"
    copy.write_bytes(paths[0].read_bytes())
    for g in range(pq.read_metadata(copy).num_row_groups):
        wreck_chunks(copy, "teacher_topk_prob.list.element", [g])
    with pytest.raises(Exception):
        pq.read_table(copy)
    want_h, want_v = payload_features(pq.read_table(paths[0]), pixels=True)
    at = np.arange(len(want_h))[::-1].copy()
    h, v = file_features([copy], pixels=True, at=at)
    assert h == want_h[::-1] and np.array_equal(v, want_v[::-1])
