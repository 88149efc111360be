"""Hostile sizes in Parquet files and WebDataset shards: what a file declares never becomes memory.

Real files throughout: Parquet written by pyarrow with zstd, shards by ``tarfile`` and ``gzip``.
Declared sizes are ~300 MB, so a reader that honours them shows a clear peak (measured as
``VmHWM`` in a fresh process), while the bounded reader refuses them at once. What is promised:

* a Parquet payload value over ``--max-file-mb`` is a row with a null payload and the reason in
  ``read_error`` (as a folder file or tar member over the cap), every row kept;
* a Parquet file whose footer, or whose dictionary pages, would decode to far more than it holds
  on disk is one line naming the file, with no such allocation (payload or ``sample_id`` column);
* a shard's GNU long-name or PAX header declaring more than 64 KiB is one line naming the shard
  (in ``kdata select`` too: exit 2); gzip and xz shards read as before, and one expanding past
  its bound is refused.
"""

from __future__ import annotations

import gzip
import lzma
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kdata.cli import main
from kdata.core.errors import KdataError
from kdata.pools import spec
from kdata.pools.base import PoolLimits
from kdata.pools.spec import open_pool
from tests.helpers.peak_memory import peak_lines
from tests.helpers.real_inputs import digits, make_tar, png_bytes

DECLARED = 300_000_000  # bytes a hostile file declares: cheap when refused, a clear peak when read


# ------------------------------------------------------------------------------------------------
# Parquet: the size cap per value, compression bombs, dictionary bombs

def test_parquet_values_over_the_cap_are_quarantined_with_the_reason(tmp_path):
    x, _ = digits(3)
    small, big = png_bytes(x[0]), png_bytes(x[1]) + bytes(300_000)  # the cap below is 262,144 bytes
    path = tmp_path / "pool.parquet"
    pq.write_table(pa.table({"sample_id": ["a", "b", "c"], "image": [small, big, png_bytes(x[2])],
                             "label": ["1", "2", "3"]}), path, compression="zstd")
    unit = open_pool(str(path), limits=PoolLimits(max_file_mb=0.25)).units[0]
    for table in (unit.read(), unit.plan().read_rows(0, 3)):
        rows = {r["sample_id"]: r for r in table.to_pylist()}
        assert list(rows) == ["a", "b", "c"] and rows["b"]["label"] == "2"
        assert rows["b"]["image"] is None
        assert rows["b"]["read_error"] == "column 'image': file is over the 0.25 MiB cap per file (--max-file-mb; 0.3 MiB)"
        assert rows["a"]["image"] == small and rows["a"]["read_error"] is None and rows["c"]["read_error"] is None


def test_parquet_fingerprint_carries_the_reader_version_and_the_cap(tmp_path):
    """Cached scores record the reader's quarantine reasons: a new reader or cap must not reuse them."""
    path = tmp_path / "pool.parquet"
    pq.write_table(pa.table({"sample_id": ["a"], "image": [png_bytes(digits(1)[0][0])]}), path)
    loose = open_pool(str(path)).units[0].fingerprint()
    tight = open_pool(str(path), limits=PoolLimits(max_file_mb=0.25)).units[0].fingerprint()
    assert loose.endswith(spec.PARQUET_READER) and tight != loose


def test_a_parquet_compression_bomb_is_one_line_and_costs_no_memory(tmp_path):
    """Three distinct 100 MB values compress to a few KiB; the footer declares them all."""
    path = tmp_path / "bomb.parquet"
    schema = pa.schema([("sample_id", pa.string()), ("image", pa.binary()), ("label", pa.string())])
    with pq.ParquetWriter(path, schema, compression="zstd", use_dictionary=False) as w:
        for i in range(3):
            value = bytes(DECLARED // 3 - 1) + bytes([i])
            w.write_table(pa.table({"sample_id": [f"s{i}"], "image": [value], "label": ["3"]}, schema=schema))
    assert path.stat().st_size < 100_000
    out = peak_lines(path, "    unit.plan()\n    print('read', unit.read().num_rows)")
    assert out[0].startswith("refused") and "bomb.parquet: Parquet file declares" in out[0], out
    assert int(out[-1]) < 64, f"peak RSS grew by {out[-1]} MiB"


@pytest.mark.parametrize("column", ["image", "sample_id"])
def test_a_parquet_dictionary_bomb_is_one_line_and_costs_no_memory(tmp_path, column):
    """One 1 MiB dictionary value referenced by 300 rows: ~1 MiB in the footer, 300 MiB decoded."""
    n, value = 300, bytes(1 << 20)
    bomb = pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, np.int32)), pa.array([value], pa.binary()))
    cols = {"sample_id": pa.array([f"s{i}" for i in range(n)]), "image": pa.array([b"x"] * n, pa.binary())}
    cols[column] = bomb if column == "image" else bomb.cast(pa.dictionary(pa.int32(), pa.string()))
    path = tmp_path / "bomb.parquet"
    pq.write_table(pa.table(cols), path, compression="zstd", store_schema=False, dictionary_pagesize_limit=1 << 24)
    assert path.stat().st_size < 1_000_000
    out = peak_lines(path, "    unit.plan()\n    print('read', unit.read().num_rows)")
    assert out[0].startswith("refused") and "bomb.parquet: Parquet rows decode to over" in out[0], out
    assert int(out[-1]) < 64, f"peak RSS grew by {out[-1]} MiB"


# ------------------------------------------------------------------------------------------------
# WebDataset shards: extended headers and expansion

def _shard(path: Path, first: tarfile.TarInfo, data_size: int, *, compress: bool = True) -> Path:
    """A shard whose first header is ``first`` followed by ``data_size`` zero bytes, then one real sample."""
    png = png_bytes(digits(1)[0][0])
    with (gzip.open(path, "wb", compresslevel=1) if compress else open(path, "wb")) as f:
        f.write(first.tobuf(format=tarfile.GNU_FORMAT)[:512])
        zeros, left = bytes(1 << 24), data_size
        while left > 0:
            f.write(zeros[:min(left, len(zeros))])
            left -= len(zeros)
        f.write(bytes(-data_size % 512))
        member = tarfile.TarInfo("a.png")
        member.size = len(png)
        f.write(member.tobuf(format=tarfile.GNU_FORMAT) + png + bytes(-len(png) % 512) + bytes(1024))
    return path


def _header(name: str, kind: bytes, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.size = kind, size
    return info


@pytest.mark.parametrize("kind", [tarfile.GNUTYPE_LONGNAME, tarfile.XHDTYPE], ids=["gnu-long-name", "pax"])
def test_a_huge_extended_tar_header_is_one_line_and_costs_no_memory(tmp_path, kind):
    """``tarfile`` reads a long-name or PAX header whole: 300 MB declared in a ~300 KB gzip shard."""
    path = _shard(tmp_path / "bomb.tar", _header("././@LongLink", kind, DECLARED), DECLARED)
    assert path.stat().st_size < 2_000_000
    out = peak_lines(path, "    print('planned', unit.plan().num_rows)")
    assert out[0].startswith("refused") and "bomb.tar: tar header declares 286.1 MiB of extended header" in out[0], out
    assert int(out[-1]) < 64, f"peak RSS grew by {out[-1]} MiB"
    assert open_pool(str(path)).units[0].labels() == set()  # the label scan is guarded too (quietly)


def test_compressed_shards_read_within_their_bound_and_are_refused_past_it(tmp_path):
    """gzip and xz shards read as before; a member over the cap is skipped, not read, but skipping
    300 MB of zeros in a ~300 KB gzip shard is refused (a few MiB must not cost minutes)."""
    x, y = digits(4)
    plain = make_tar(tmp_path / "plain.tar", [(f"k{i}", str(y[i]), png_bytes(x[i])) for i in range(4)])
    for name, pack in (("gz.tar", gzip.compress), ("xz.tar", lzma.compress)):
        (tmp_path / name).write_bytes(pack(plain.read_bytes()))
        table = open_pool(str(tmp_path / name)).read_all()
        assert table.column("sample_id").to_pylist() == [f"k{i}" for i in range(4)]
        assert table.column("image").to_pylist() == [png_bytes(x[i]) for i in range(4)]
    path = _shard(tmp_path / "bomb.tar", _header("z.png", tarfile.REGTYPE, DECLARED), DECLARED)
    with pytest.raises(KdataError, match=r"bomb\.tar: compressed shard expands past 256\.0 MiB"):
        open_pool(str(path)).units[0].plan()


def test_a_hostile_tar_header_stops_the_cli_with_one_line(tmp_path, builtin_models, capsys):
    path = _shard(tmp_path / "bomb.tar", _header("././@LongLink", tarfile.GNUTYPE_LONGNAME, 1 << 20), 1 << 20,
                  compress=False)
    code = main(["select", "--pool", str(path), "--method", "kd3", "--budget", "0.5", "--device", "cpu",
                 "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "Traceback" not in err, err
    assert err.startswith("kdata: error: ") and "bomb.tar: tar header declares 1.0 MiB of extended header" in err
    assert not (tmp_path / "out" / "manifest.json").exists()
