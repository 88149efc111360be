"""Compressed WebDataset shards by their usual names: ``shard.tar.gz`` (or ``.tgz``, ``.tar.bz2``,
``.tar.xz``) was "unrecognised pool" although the reader decompresses gzip, bz2 and xz content
(it reads by the bytes, not the name). Such a shard, a directory of them, and a brace pattern of
them now read as the same samples as the plain ``.tar``; a file so named that is not a compressed
tar is one line naming it."""

from __future__ import annotations

import bz2
import gzip
import lzma

import pytest

from kdata.cli import main
from kdata.core.errors import KdataError
from kdata.pools.spec import open_pool
from tests.helpers.real_inputs import digits, make_tar, png_bytes

COMPRESS = {".tar.gz": gzip.compress, ".tgz": gzip.compress, ".tar.bz2": bz2.compress, ".tar.xz": lzma.compress}


def _tar(tmp_path, n=6, prefix="k"):
    x, y = digits(n)
    return make_tar(tmp_path / f"{prefix}.tar", [(f"{prefix}{i:03d}", str(y[i]), png_bytes(x[i])) for i in range(n)])


def _table(spec):
    return [u.read().select(["sample_id", "image", "label"]) for u in open_pool(str(spec)).units]


@pytest.mark.parametrize("suffix", list(COMPRESS))
def test_a_compressed_shard_reads_as_the_plain_tar(tmp_path, suffix):
    plain = _tar(tmp_path)
    shard = tmp_path / f"shard{suffix}"
    shard.write_bytes(COMPRESS[suffix](plain.read_bytes()))
    (got,), (want,) = _table(shard), _table(plain)
    assert got.equals(want) and got.num_rows == 6


def test_a_directory_and_a_brace_pattern_of_tar_gz_shards(tmp_path):
    d = tmp_path / "shards"
    d.mkdir()
    for k in range(2):
        plain = _tar(tmp_path, prefix=f"s{k}")
        (d / f"data-{k:03d}.tar.gz").write_bytes(gzip.compress(plain.read_bytes()))
    by_dir = _table(d)
    by_brace = _table(f"{d}/data-{{000..001}}.tar.gz")
    assert [t.num_rows for t in by_dir] == [6, 6]
    assert all(a.equals(b) for a, b in zip(by_dir, by_brace))


def test_a_tar_gz_that_is_not_a_tar_is_one_line_naming_it(tmp_path):
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(b"garbage")
    with pytest.raises(KdataError, match=r"bad\.tar\.gz: cannot read tar shard"):
        for unit in open_pool(str(bad)).units:
            unit.rows()


def test_cli_select_reads_a_tar_gz_pool(tmp_path, capsys):
    shard = tmp_path / "pool.tar.gz"
    shard.write_bytes(gzip.compress(_tar(tmp_path, n=12).read_bytes()))
    code = main(["select", "--pool", str(shard), "--method", "kd3", "--budget", "0.5", "--device", "cpu",
                 "--out", str(tmp_path / "out"), "--quiet"])
    assert code == 0, capsys.readouterr().err
    assert (tmp_path / "out" / "manifest.json").is_file()
