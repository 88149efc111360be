"""Hostile pools and bad values in input files (issue 15, items 6–9): every attempt as a test.

Real files throughout: tars written with ``tarfile``, Parquet with pyarrow, a FIFO from
``os.mkfifo``, a symlink to ``/dev/zero``, a file name with a byte that is not UTF-8, and a valid
13,000 × 13,000 PNG that is 20 KB on disk. What is promised:

* a key repeated inside one tar stops the run with one line naming the tar and the key;
* Parquet labels the teacher does not know are refused (as folder names are); a null
  ``sample_id`` is one line naming the file;
* only regular files are read, symlinks only inside the pool (unless ``follow_symlinks``), at most
  ``max_file_mb`` per file and ``max_pixels`` per image: anything else is quarantined with the
  reason and the run goes on;
* a name that is not UTF-8 is quarantined under its escaped name;
* a bring-your-own top-k index far beyond any class count is one line, before any dense allocation.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import struct
import subprocess
import sys
import tarfile
import zlib
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kdata.cli import main
from kdata.core.errors import KdataError
from kdata.models.images import DEFAULT_MAX_PIXELS, check_max_pixels, decode_multi
from kdata.pools.base import PoolLimits
from kdata.pools.spec import open_pool
from kdata.scoring.byo import MAX_CLASSES, load_scores
from tests.helpers.real_inputs import (
    CLASSES,
    digits,
    make_image_folder,
    make_tar,
    png_bytes,
)

KEY = ((1, 32, 32), (0.5,), (0.5,), "bilinear")


@contextmanager
def deadline(seconds: int):
    """Fail (instead of hanging the suite) when the body blocks: a FIFO read, an endless read."""
    def expired(*_):
        raise TimeoutError(f"still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def big_png(path: Path, width: int, height: int) -> Path:
    """A valid 1-bit grayscale PNG, all black: a few KB on disk however large (zlib, row by row)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row, z = b"\0" * (1 + (width + 7) // 8), zlib.compressobj(9)
    idat = b"".join([z.compress(row) for _ in range(height)] + [z.flush()])
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def _write(name: bytes, data: bytes) -> None:
    """Create a file under a name given as bytes (which may be no valid UTF-8)."""
    with open(name, "wb") as fh:
        fh.write(data)


def _select(pool: str, out: Path, *extra: str) -> int:
    return main(["select", "--pool", pool, "--method", "kd3", "--budget", "5", "--device", "cpu",
                 "--out", str(out), "--quiet", *extra])


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    return err


# ------------------------------------------------------------------------------------------------
# 6. a key repeated inside one WebDataset tar

def _tar_with_repeat(path: Path) -> Path:
    """21 samples, the key 'k007' written twice (two .png members, later in the archive)."""
    x, y = digits(21)
    samples = [(f"k{i:03d}", CLASSES[y[i]], png_bytes(x[i])) for i in range(20)] + [("k007", "3", png_bytes(x[20]))]
    return make_tar(path, samples)


def test_repeated_key_in_a_tar_is_refused_naming_tar_and_key(tmp_path):
    tar = _tar_with_repeat(tmp_path / "shard-000.tar")
    with pytest.raises(KdataError, match=r"shard-000\.tar: key 'k007' occurs twice") as exc:
        open_pool(str(tar)).read_all()
    assert "\n" not in str(exc.value)
    # a key with different extensions is one sample, as WebDataset intends
    ok = make_tar(tmp_path / "ok.tar", [("a", "1", png_bytes(digits(1)[0][0]))])
    assert open_pool(str(ok)).read_all().num_rows == 1


def test_repeated_key_in_a_tar_stops_the_cli_with_one_line(tmp_path, builtin_models, capsys):
    tar = _tar_with_repeat(tmp_path / "shard-000.tar")
    assert _select(str(tar), tmp_path / "out") == 2
    err = _one_line_error(capsys)
    assert "shard-000.tar" in err and "'k007'" in err
    assert not (tmp_path / "out" / "manifest.json").exists()


# ------------------------------------------------------------------------------------------------
# 7 and 9. Parquet: labels the teacher does not know; a null sample_id

def _parquet(path: Path, *, labels=None, ids=None, n: int = 12) -> Path:
    x, y = digits(n)
    cols = {"sample_id": ids or [f"s{i}" for i in range(n)], "image": [png_bytes(a) for a in x],
            "label": labels or [CLASSES[v] for v in y]}
    pq.write_table(pa.table(cols), path)
    return path


def test_parquet_pool_labels_are_read_from_the_label_column(tmp_path):
    y = digits(12)[1]
    labels = [CLASSES[v] for v in y]
    labels[5], labels[6] = "zebra", None
    p = _parquet(tmp_path / "pool.parquet", labels=labels)
    pool = open_pool(str(p))
    assert pool.class_names is None  # not fed to models as their class names (README: folders only)
    assert pool.labels() == sorted({v for v in labels if v is not None})
    with pytest.raises(KdataError, match=r"pool\.parquet: pool labels \['zebra'\] are not among the teacher's"):
        pool.check_labels(CLASSES)
    open_pool(str(_parquet(tmp_path / "fine.parquet"))).check_labels(CLASSES)  # known labels: no error
    # a directory of Parquet files: the error names the file holding the unknown label
    d = tmp_path / "dir"
    d.mkdir()
    _parquet(d / "a.parquet")
    _parquet(d / "b.parquet", labels=labels)
    with pytest.raises(KdataError, match=r"b\.parquet: pool labels \['zebra'\]"):
        open_pool(str(d)).check_labels(CLASSES)


def test_unknown_tar_labels_are_refused_too(tmp_path):
    x = digits(2)[0]
    tar = make_tar(tmp_path / "s.tar", [("a", "3", png_bytes(x[0])), ("b", "giraffe", png_bytes(x[1]))])
    pool = open_pool(str(tar))
    assert pool.labels() == ["3", "giraffe"]
    with pytest.raises(KdataError, match=r"s\.tar: pool labels \['giraffe'\]"):
        pool.check_labels(CLASSES)


def test_unknown_parquet_labels_stop_select_with_one_line(tmp_path, builtin_models, capsys):
    labels = [CLASSES[v] for v in digits(12)[1]]
    labels[4] = "zebra"
    p = _parquet(tmp_path / "pool.parquet", labels=labels)
    assert _select(str(p), tmp_path / "out") == 2
    err = _one_line_error(capsys)
    assert "pool.parquet" in err and "'zebra'" in err and "not among the teacher's class names" in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_null_sample_id_in_parquet_is_one_line_naming_the_file(tmp_path, builtin_models, capsys):
    p = _parquet(tmp_path / "ids.parquet", ids=[f"s{i}" if i != 3 else None for i in range(12)])
    with pytest.raises(KdataError, match=r"ids\.parquet: column 'sample_id' row 3: null id"):
        open_pool(str(p)).read_all()
    assert _select(str(p), tmp_path / "out") == 2
    assert "ids.parquet" in _one_line_error(capsys)


# ------------------------------------------------------------------------------------------------
# 8. special files, symlinks, size and pixel caps; 9. names that are not UTF-8

def _hostile_folder(root: Path, outside: Path) -> dict[str, str]:
    """An ImageFolder with hostile entries; returns {escaped sample_id: expected words of the reason}."""
    make_image_folder(root, n=20)
    good = png_bytes(digits(1, offset=50)[0][0])
    outside.write_bytes(good)
    os.mkfifo(root / "1" / "p.png")
    os.symlink("/dev/zero", root / "1" / "z.png")
    os.symlink(outside, root / "2" / "out.png")
    os.symlink(root / "0" / min(os.listdir(root / "0")), root / "2" / "in.png")  # stays inside: read
    _write(os.fsencode(root / "3") + b"/bad\xff.png", good)
    (root / "4" / "huge.png").write_bytes(b"")
    os.truncate(root / "4" / "huge.png", 65 * 2**20)  # sparse: 65 MiB that cost no disk
    big_png(root / "5" / "big.png", 13_000, 13_000)
    return {"1/p.png": "a FIFO, not a regular file",
            "1/z.png": "symlink to /dev/zero, outside the pool",
            "2/out.png": "outside the pool (--follow-symlinks reads it)",
            "3/bad\\xff.png": "not valid UTF-8",
            "4/huge.png": "file is over the 64 MiB cap per file (--max-file-mb; 65.0 MiB)",
            "5/big.png": "image is over the 64-megapixel cap (--max-pixels; 13000×13000 = 169 megapixels)"}


def test_special_files_are_quarantined_with_the_reason_and_the_run_goes_on(tmp_path, builtin_models, capsys):
    root = tmp_path / "pool"
    expected = _hostile_folder(root, tmp_path / "outside.png")
    with deadline(120):
        code = main(["select", "--pool", str(root), "--method", "kd3", "--budget", "5", "--device", "cpu",
                     "--out", str(tmp_path / "out"), "--json", "--quiet"])
    assert code == 0
    c = json.loads(capsys.readouterr().out)["counts"]
    assert (c["n_in"], c["quarantined"]) == (20 + 1 + len(expected), len(expected))  # +1: the inner symlink
    dec = pq.read_table(tmp_path / "out" / "decisions.parquet").to_pylist()
    q = {d["sample_id"]: d["error"] for d in dec if d["decision"] == "quarantined"}
    assert set(q) == set(expected)
    for sid, words in expected.items():
        assert words in q[sid], (sid, q[sid])
    assert {d["decision"] for d in dec if d["sample_id"] == "2/in.png"} <= {"kept", "rejected"}


def test_follow_symlinks_reads_outside_targets_but_never_devices(tmp_path):
    root = tmp_path / "pool"
    (root / "a").mkdir(parents=True)
    good = png_bytes(digits(1)[0][0])
    (tmp_path / "elsewhere.png").write_bytes(good)
    os.symlink(tmp_path / "elsewhere.png", root / "a" / "out.png")
    os.symlink("/dev/zero", root / "a" / "z.png")
    os.mkfifo(root / "a" / "p.png")
    with deadline(30):
        strict = {r["sample_id"]: r for r in open_pool(str(root)).read_all().to_pylist()}
        loose = {r["sample_id"]: r for r in open_pool(str(root), limits=PoolLimits(follow_symlinks=True))
                 .read_all().to_pylist()}
    assert strict["a/out.png"]["image"] is None and "outside the pool" in strict["a/out.png"]["read_error"]
    assert loose["a/out.png"]["image"] == good and loose["a/out.png"]["read_error"] is None
    assert loose["a/z.png"]["read_error"] == "a character device, not a regular file"
    assert loose["a/p.png"]["read_error"] == "a FIFO, not a regular file"


def test_size_cap_is_configurable_and_part_of_the_fingerprint(tmp_path):
    root = tmp_path / "pool"
    (root / "a").mkdir(parents=True)
    small, large = png_bytes(digits(1)[0][0]), png_bytes(np.tile(digits(1)[0][0], (8, 8)))
    (root / "a" / "small.png").write_bytes(small)
    (root / "a" / "large.png").write_bytes(large)
    cap = (len(small) + len(large)) / 2 / 2**20  # between the two sizes
    tight = open_pool(str(root), limits=PoolLimits(max_file_mb=cap))
    rows = {r["sample_id"]: r for r in tight.read_all().to_pylist()}
    assert rows["a/small.png"]["image"] == small
    assert rows["a/large.png"]["image"] is None and "over the" in rows["a/large.png"]["read_error"]
    loose = open_pool(str(root))
    assert loose.read_all().column("read_error").null_count == 2
    assert tight.units[0].fingerprint() != loose.units[0].fingerprint()  # cached scores cannot leak across caps
    for bad in (0, -1, float("nan"), "64"):
        with pytest.raises(KdataError, match="--max-file-mb"):
            PoolLimits(max_file_mb=bad)


def test_tar_member_over_the_size_cap_is_quarantined_not_read(tmp_path):
    x = digits(2)[0]
    tar = make_tar(tmp_path / "s.tar", [("a", "1", png_bytes(x[0])), ("b", "2", png_bytes(np.tile(x[1], (8, 8))))])
    cap = len(png_bytes(np.tile(x[1], (8, 8)))) / 2 / 2**20
    rows = {r["sample_id"]: r for r in open_pool(str(tar), limits=PoolLimits(max_file_mb=cap)).read_all().to_pylist()}
    assert rows["a"]["read_error"] is None and rows["a"]["image"] == png_bytes(x[0])
    assert rows["b"]["image"] is None and re.fullmatch(
        r"tar file is over the [\d.]+ MiB cap per file \(--max-file-mb; member b\.png; [\d.]+ MiB\)", rows["b"]["read_error"])


def test_payloads_over_a_cap_are_one_kind_of_error_whatever_their_size(tmp_path):
    """What differs from row to row (size, dimensions, member) sits in the trailing brackets, so the
    manifest's ``quarantined_by_reason`` counts one kind per cap, not one per row."""
    from kdata.dataset.decisions import quarantine_kind
    from kdata.pools.files import over_cap

    limits = PoolLimits(max_file_mb=2)
    sizes = [over_cap(n, limits) for n in (3 << 20, 5 << 20, None)] + \
        ["tar " + over_cap(n, limits, where=f"member {m}") for n, m in ((3 << 20, "a.png"), (9 << 20, "b.png"))]
    assert {quarantine_kind(e) for e in sizes[:3]} == {"file is over the 2 MiB cap per file"}
    assert {quarantine_kind(e) for e in sizes[3:]} == {"tar file is over the 2 MiB cap per file"}
    errors = []
    for w, h in ((120, 100), (130, 100)):
        with pytest.raises(ValueError) as err:
            decode_multi(png_bytes(np.zeros((h, w), np.uint8)), [KEY], max_pixels=10_000)
        errors.append(str(err.value))
    assert {quarantine_kind(e) for e in errors} == {"image is over the 0.01-megapixel cap"}


def test_tar_and_parquet_files_that_are_not_regular_files_are_refused_up_front(tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    make_tar(shards / "a.tar", [("k", "1", png_bytes(digits(1)[0][0]))])
    os.symlink("/dev/zero", shards / "z.tar")
    with deadline(30), pytest.raises(KdataError, match=r"z\.tar: tar shard symlink to /dev/zero, outside the pool"):
        open_pool(str(shards))
    with deadline(30), pytest.raises(KdataError, match=r"z\.tar: tar shard a character device"):
        open_pool(str(shards), limits=PoolLimits(follow_symlinks=True))
    pdir = tmp_path / "pq"
    pdir.mkdir()
    _parquet(pdir / "a.parquet")
    os.mkfifo(pdir / "p.parquet")
    with deadline(30), pytest.raises(KdataError, match=r"p\.parquet: a FIFO, not a regular file"):
        open_pool(str(pdir))


def test_names_that_are_not_utf8_are_quarantined_under_their_escaped_name(tmp_path):
    root = tmp_path / "pool"
    (root / "7").mkdir(parents=True)
    good = png_bytes(digits(1)[0][0])
    (root / "7" / "ok.png").write_bytes(good)
    _write(os.fsencode(root / "7") + b"/bad\xff.png", good)
    os.mkdir(os.fsencode(root) + b"/cls\xfe")
    _write(os.fsencode(root) + b"/cls\xfe/x.png", good)
    pool = open_pool(str(root))
    assert pool.class_names == ["7"]  # an undecodable folder is no class name
    t = pool.read_all()
    rows = {r["sample_id"]: r for r in t.to_pylist()}
    assert set(rows) == {"7/ok.png", "7/bad\\xff.png", "cls\\xfe/x.png"}
    assert rows["7/bad\\xff.png"]["read_error"].startswith("file name is not valid UTF-8")
    pq.write_table(t, tmp_path / "written.parquet")  # Arrow holds only valid UTF-8: no UnicodeEncodeError
    fp = pool.units[0].fingerprint()
    assert fp == open_pool(str(root)).units[0].fingerprint()
    # the same inside a tar
    tar = tmp_path / "s.tar"
    with tarfile.open(tar, "w", format=tarfile.GNU_FORMAT, encoding="utf-8", errors="surrogateescape") as tf:
        for name in (os.fsdecode(b"k\xff.png"), "ok.png"):
            info = tarfile.TarInfo(name)
            info.size = len(good)
            tf.addfile(info, io.BytesIO(good))
    rows = {r["sample_id"]: r for r in open_pool(str(tar)).read_all().to_pylist()}
    assert rows["k\\xff"]["image"] is None and "not valid UTF-8" in rows["k\\xff"]["read_error"]
    assert rows["ok"]["image"] == good


def test_pixel_cap_refuses_before_decoding(tmp_path):
    assert DEFAULT_MAX_PIXELS == 64_000_000
    small = png_bytes(np.zeros((100, 120), np.uint8))
    with pytest.raises(ValueError, match=r"image is over the 0.01-megapixel cap \(--max-pixels; 120×100 = 0.012 megapixels\)"):
        decode_multi(small, [KEY], max_pixels=10_000)
    assert decode_multi(small, [KEY], max_pixels=12_000)[KEY].shape == (1, 32, 32)
    # beyond PIL's own bomb limit (2 × 89.5 MP) PIL refuses in open(): still our one reason
    huge = big_png(tmp_path / "huge.png", 15_000, 15_000).read_bytes()
    with pytest.raises(ValueError, match=r"image is over the 64-megapixel cap \(--max-pixels; 225 megapixels\)"):
        decode_multi(huge, [KEY])
    for bad in (0, -5, 1.5, True):
        with pytest.raises(KdataError, match="--max-pixels"):
            check_max_pixels(bad)


def test_a_13000_square_png_costs_no_memory_to_refuse(tmp_path):
    """Measured in a fresh process: the decode attempt must not raise the peak RSS (a decode would
    add ≥ 169 MB for mode '1' alone, ~2 GB through RGB and resize)."""
    path = big_png(tmp_path / "big.png", 13_000, 13_000)
    assert path.stat().st_size < 100_000
    code = f"""
import resource
from kdata.models.images import decode_multi
data = open({str(path)!r}, "rb").read()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    decode_multi(data, [((1, 32, 32), (0.5,), (0.5,), "bilinear")])
    print("decoded")
except ValueError as exc:
    print("refused", exc)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True,
                         cwd=Path(__file__).resolve().parents[2]).stdout.split("\n")
    assert out[0].startswith("refused") and "over the 64-megapixel cap" in out[0], out
    assert int(out[1]) < 20, f"peak RSS grew by {out[1]} MiB"


def test_dedup_features_of_a_13000_square_png_cost_no_memory(tmp_path):
    """Exact/near dedup reads the same pool and must not decode what ``--max-pixels`` quarantined (it
    decoded the image whole: ~1.9 GB for a 13,000² RGBA PNG). Measured in a fresh process (VmHWM),
    for one image and through a pool's units as the pipeline reads them, with an empty cache."""
    root = tmp_path / "pool"
    (root / "a").mkdir(parents=True)
    path = big_png(root / "a" / "big.png", 13_000, 13_000)
    (root / "a" / "small.png").write_bytes(png_bytes(digits(1)[0][0]))
    (tmp_path / "warm" / "a").mkdir(parents=True)
    (tmp_path / "warm" / "a" / "small.png").write_bytes(png_bytes(digits(1)[0][0]))
    code = f"""
import hashlib
import numpy as np
from kdata.dedup.features import image_features, pool_features
from kdata.pools.spec import open_pool
def hwm():
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
data = open({str(path)!r}, "rb").read()
pool = open_pool({str(root)!r})
pool_features(open_pool({str(tmp_path / "warm")!r}), np.array(["a/small.png"], dtype=object), pixels=True)
before = hwm()  # after the imports (torch, for the workers' settings) and a first pool's features
h, v = image_features(data)
print(h == hashlib.sha256(b"raw:" + data).hexdigest(), bool(v.any()))
hashes, vecs = pool_features(pool, np.array(["a/big.png", "a/small.png"], dtype=object), pixels=True)
print(hashes[0] == h, bool(vecs[0].any()), bool(vecs[1].any()))
print((hwm() - before) // 1024)
"""
    env = {**os.environ, "KDATA_CACHE": str(tmp_path / "cache")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.split("\n")
    assert lines[:2] == ["True False", "True False True"], lines
    assert int(lines[2]) < 20, f"peak RSS grew by {lines[2]} MiB"


# ------------------------------------------------------------------------------------------------
# 9. bring-your-own predictions: a top-k index far beyond any class count

def _topk_file(path: Path, idx_b: list[int], meta: dict | None = None) -> Path:
    t = pa.table({"sample_id": ["a", "b"], "teacher_topk_idx": [[0, 1], idx_b],
                  "teacher_topk_prob": [[0.6, 0.3], [0.7, 0.2]], "student_topk_idx": [[0, 1], [1, 0]],
                  "student_topk_prob": [[0.5, 0.2], [0.5, 0.2]]})
    if meta:
        t = t.replace_schema_metadata({"kdata": json.dumps(meta)})
    pq.write_table(t, path)
    return path


def test_byo_topk_index_of_two_billion_is_one_line_before_any_dense_rebuild(tmp_path, capsys):
    p = _topk_file(tmp_path / "preds.parquet", [2_000_000_000, 1])
    with pytest.raises(KdataError, match=r"preds\.parquet: column 'teacher_topk_idx' row 1 \(sample_id 'b'\): "
                                         r"class index 2000000000 is out of range") as exc:
        load_scores(str(p))
    assert "\n" not in str(exc.value)
    assert main(["select", "--scores", str(p), "--method", "kd3", "--budget", "1",
                 "--out", str(tmp_path / "out"), "--quiet"]) == 2
    assert "teacher_topk_idx" in _one_line_error(capsys)
    # a declared class count (num_classes, or class_names) bounds the indices
    p = _topk_file(tmp_path / "named.parquet", [5, 1], {"class_names": ["x", "y", "z"]})
    with pytest.raises(KdataError, match=r"class index 5 ≥ num_classes 3"):
        load_scores(str(p))
    p = _topk_file(tmp_path / "declared.parquet", [2, 1], {"num_classes": MAX_CLASSES + 1})
    with pytest.raises(KdataError, match=r"declared num_classes"):
        load_scores(str(p))
    _, c, names = load_scores(str(_topk_file(tmp_path / "ok.parquet", [2, 1], {"class_names": ["x", "y", "z", "w"]})))
    assert c == 4 and names == ["x", "y", "z", "w"]
