"""WebDataset tar shards read whole or refused: a shard cut short (at a member boundary, inside a
header, gzip-compressed too) stops the run with one line naming the last member left; a damaged
header likewise; intact tars (tarfile, GNU tar, PAX, no record padding) read as before. Link,
directory and device members are quarantined with what they are, never followed, labels kept."""

from __future__ import annotations

import gzip
import io
import json
import shutil
import subprocess
import tarfile

import pyarrow.parquet as pq
import pytest

from kdata.cli import main
from kdata.core.errors import KdataError
from kdata.pools.spec import open_pool
from kdata.pools.tar import TarRows
from tests.helpers.real_inputs import digits, make_tar, png_bytes


def _samples(n: int = 20) -> list[tuple[str, str, bytes]]:
    x, y = digits(n)
    return [(f"k{i:03d}", str(y[i]), png_bytes(x[i])) for i in range(n)]


def _offsets(path) -> dict[str, int]:
    with tarfile.open(path) as tf:
        return {m.name: m.offset for m in tf}


def _select(pool, out) -> int:
    return main(["select", "--pool", str(pool), "--method", "kd3", "--budget", "1.0", "--device", "cpu",
                 "--out", str(out), "--quiet"])


@pytest.mark.parametrize("cut, last", [
    (lambda off: off["k005.png"], "k004.cls"),  # at a member boundary
    (lambda off: off["k005.png"] + 200, "k004.cls"),  # inside an image header
    (lambda off: off["k005.cls"] + 200, "k005.png"),  # inside a label header: the image would lose its label
    (lambda off: off["k019.cls"] + 512 + 512, "k019.cls"),  # one zero block of the two
], ids=["at-a-member", "in-an-image-header", "in-a-label-header", "one-zero-block"])
def test_a_cut_tar_is_refused_when_planned_naming_the_last_member(tmp_path, cut, last):
    whole = make_tar(tmp_path / "whole.tar", _samples())
    cut_tar = tmp_path / "cut.tar"
    cut_tar.write_bytes(whole.read_bytes()[:cut(_offsets(whole))])
    msg = f"cut.tar: truncated tar shard (no end-of-archive marker after member {last})"
    with pytest.raises(KdataError, match=msg.replace("(", r"\(").replace(")", r"\)")):
        open_pool(str(cut_tar)).units[0].plan()
    with pytest.raises(KdataError, match="truncated tar shard"):
        open_pool(str(cut_tar)).read_all()


def test_a_cut_tar_stops_the_cli_with_one_line_before_scoring(tmp_path, builtin_models, capsys):
    whole = make_tar(tmp_path / "whole.tar", _samples())
    cut_tar = tmp_path / "cut.tar"
    cut_tar.write_bytes(whole.read_bytes()[:_offsets(whole)["k005.png"]])
    assert _select(cut_tar, tmp_path / "o") == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    assert "cut.tar: truncated tar shard (no end-of-archive marker after member k004.cls)" in err
    assert not (tmp_path / "o" / "decisions.parquet").exists()


def test_compressed_tars_are_checked_in_the_decompressed_stream(tmp_path):
    whole = make_tar(tmp_path / "whole.tar", _samples())
    data = whole.read_bytes()
    (tmp_path / "gz.tar").write_bytes(gzip.compress(data))
    gz, plain = (open_pool(str(p)).read_all().drop_columns(["source"]) for p in (tmp_path / "gz.tar", whole))
    assert gz.num_rows == 20 and gz.equals(plain)
    (tmp_path / "gzcut.tar").write_bytes(gzip.compress(data[:_offsets(whole)["k005.png"]]))
    with pytest.raises(KdataError, match=r"gzcut\.tar: truncated tar shard .*after member k004\.cls"):
        open_pool(str(tmp_path / "gzcut.tar")).units[0].plan()


def test_a_damaged_header_mid_archive_is_refused(tmp_path):
    whole = make_tar(tmp_path / "whole.tar", _samples())
    data = bytearray(whole.read_bytes())
    at = _offsets(whole)["k005.png"]
    data[at + 100:at + 108] = b"garbage!"  # mode field: the header's checksum no longer matches
    (tmp_path / "bad.tar").write_bytes(bytes(data))
    with pytest.raises(KdataError, match=rf"bad\.tar: damaged tar header at byte {at} \(after member k004\.cls\)"):
        open_pool(str(tmp_path / "bad.tar")).read_all()


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT])
def test_intact_tars_read_exactly_as_before(tmp_path, fmt):
    samples = _samples(6)
    path = tmp_path / "s.tar"
    with tarfile.open(path, "w", format=fmt) as tf:
        d = tarfile.TarInfo(top := "d" * 120)  # a long name: GNU long-name and PAX path headers
        d.type = tarfile.DIRTYPE  # a plain directory entry is no sample
        tf.addfile(d)
        for key, label, img in samples:
            for ext, data in (("png", img), ("cls", label.encode())):
                info = tarfile.TarInfo(f"{top}/{key}.{ext}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    data = path.read_bytes()
    assert len(data) % tarfile.RECORDSIZE == 0  # padded to a record after the two zero blocks
    end = len(data.rstrip(b"\0"))
    end += -end % tarfile.BLOCKSIZE
    (tmp_path / "exact.tar").write_bytes(data[:end + 2 * tarfile.BLOCKSIZE])  # the marker, no padding
    for p in (path, tmp_path / "exact.tar"):
        t = open_pool(str(p)).read_all()
        assert t.column("sample_id").to_pylist() == [f"{top}/{k}" for k, _, _ in samples]
        assert t.column("label").to_pylist() == [lab for _, lab, _ in samples]
        assert t.column("image").to_pylist() == [img for _, _, img in samples]
        assert t.column("read_error").null_count == t.num_rows


@pytest.mark.skipif(shutil.which("tar") is None, reason="no tar program")
def test_a_tar_written_by_the_tar_program_reads(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for key, label, img in _samples(4):
        (src / f"{key}.png").write_bytes(img)
        (src / f"{key}.cls").write_text(label)
    subprocess.run(["tar", "cf", str(tmp_path / "gnu.tar"), "-C", str(src), "."], check=True)
    rows = TarRows(tmp_path / "gnu.tar")
    assert sorted(rows.keys) == [f"./k{i:03d}" for i in range(4)] and not any(rows.refused)


def _links_tar(path, samples):
    """Regular samples, then a symlink out of the tar, a hard link and a directory named like images."""
    make_tar(path, samples)
    with tarfile.open(path, "a") as tf:
        members = [("s001.png", tarfile.SYMTYPE, "/etc/passwd"), ("h001.png", tarfile.LNKTYPE, "k000.png"),
                   ("d001.png", tarfile.DIRTYPE, ""), ("f001.png", tarfile.FIFOTYPE, "")]
        for name, kind, target in members:
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, target
            tf.addfile(info)
            cls = tarfile.TarInfo(name.replace(".png", ".cls"))
            cls.size = 1
            tf.addfile(cls, io.BytesIO(b"3"))
    return path


def test_link_directory_and_device_members_are_quarantined_with_what_they_are(tmp_path):
    samples = _samples(3)
    t = open_pool(str(_links_tar(tmp_path / "s.tar", samples))).read_all()
    rows = {r["sample_id"]: r for r in t.to_pylist()}
    assert list(rows) == ["k000", "k001", "k002", "s001", "h001", "d001", "f001"]
    assert rows["s001"]["read_error"] == "tar member is a symlink, not a file (s001.png)"
    assert rows["h001"]["read_error"] == "tar member is a hard link, not a file (h001.png)"
    assert rows["d001"]["read_error"] == "tar member is a directory, not a file (d001.png)"
    assert rows["f001"]["read_error"] == "tar member is a FIFO, not a file (f001.png)"
    for key in ("s001", "h001", "d001", "f001"):
        assert rows[key]["image"] is None and rows[key]["label"] == "3"  # never followed; the label kept
    assert rows["k000"]["image"] == samples[0][2] and rows["k000"]["read_error"] is None


def test_link_members_reach_the_decisions_with_their_error(tmp_path, builtin_models, capsys):
    _links_tar(tmp_path / "s.tar", _samples(8))
    assert _select(tmp_path / "s.tar", tmp_path / "o") == 0
    capsys.readouterr()
    dec = {d["sample_id"]: d for d in pq.read_table(tmp_path / "o" / "decisions.parquet").to_pylist()}
    assert dec["s001"]["decision"] == "quarantined" and "is a symlink, not a file" in dec["s001"]["error"]
    assert "is a hard link, not a file" in dec["h001"]["error"]
    assert main(["inspect", str(tmp_path / "o"), "--json"]) == 0
    listed = {q["sample_id"] for q in json.loads(capsys.readouterr().out)["quarantined"]}
    assert listed == {"s001", "h001", "d001", "f001"}


def test_a_new_tar_reader_version_changes_the_shard_fingerprint(tmp_path, monkeypatch):
    """Score and dedup cache entries are keyed by the unit fingerprint and keep the reader's
    quarantine reasons: a reader that reads members differently (``TAR_READER``) must not reuse them."""
    from kdata.pools import tar

    path = _links_tar(tmp_path / "s.tar", _samples(4))
    before = open_pool(str(path)).units[0].fingerprint()
    assert before.endswith(tar.TAR_READER) and open_pool(str(path)).units[0].fingerprint() == before
    monkeypatch.setattr(tar, "TAR_READER", "tar-reader-test")
    assert open_pool(str(path)).units[0].fingerprint() != before
