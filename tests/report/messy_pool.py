"""A folder pool ``root/<class>/<file>.png`` of built-in digits plus unreadable files of several kinds
(truncated PNGs, zero-byte files, random bytes named .jpg, a dangling symlink, an image over
``--max-pixels``), curated by ``kdata select``: the quarantine tests of ``kdata inspect`` and the report."""

from __future__ import annotations

import contextlib
import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from kdata.cli import main
from tests.helpers.real_inputs import digits, png_bytes

MAX_PIXELS = 2000  # the run's --max-pixels: the 64 × 64 image is over it, the 32 × 32 digits are not


def png_of_zeros(w: int, h: int) -> bytes:
    """A valid greyscale PNG of ``w`` × ``h`` black pixels, compressed as it is written: a few KB on
    disk for any size (a decompression bomb when ``w * h`` is large)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    z, row, parts = zlib.compressobj(9), b"\x00" * (w + 1), []
    for y in range(0, h, 256):
        parts.append(z.compress(row * min(256, h - y)))
    parts.append(z.flush())
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")


def make_messy_pool(root: Path, n: int = 120) -> dict[str, str]:
    """Write the pool; returns {sample_id: what is wrong with it} of the unreadable files (15 of them)."""
    x, y = digits(n)
    for i, (img, c) in enumerate(zip(x, y)):
        (root / str(c)).mkdir(parents=True, exist_ok=True)
        (root / str(c) / f"img{i:04d}.png").write_bytes(png_bytes(img))
    good, rng, bad = png_bytes(x[0]), np.random.default_rng(0), {}
    for k in range(4):
        bad[f"{k}/trunc{k}.png"] = "truncated"
        (root / f"{k}/trunc{k}.png").write_bytes(good[:len(good) - 30 - k])
    for k in range(3):
        bad[f"{k + 4}/empty{k}.png"] = "zero bytes"
        (root / f"{k + 4}/empty{k}.png").write_bytes(b"")
    for k in range(6):
        bad[f"{k % 10}/junk{k}.jpg"] = "random bytes"
        (root / f"{k % 10}/junk{k}.jpg").write_bytes(rng.bytes(200 + k))
    bad["8/dangling.png"] = "dangling symlink"
    os.symlink(root / "8" / "gone.png", root / "8" / "dangling.png")
    bad["9/large.png"] = "over --max-pixels"
    (root / "9" / "large.png").write_bytes(png_of_zeros(64, 64))
    return bad


def messy_run(tmp: Path) -> tuple[Path, dict[str, str], str]:
    """The pool curated by ``kdata select --budget 0.5``: (OUT, the unreadable files, select's summary)."""
    bad = make_messy_pool(tmp / "root")
    out, summary = tmp / "out", io.StringIO()
    with contextlib.redirect_stdout(summary):
        rc = main(["select", "--pool", str(tmp / "root"), "--out", str(out), "--budget", "0.5", "--device", "cpu",
                   "--quiet", "--max-pixels", str(MAX_PIXELS)])
    assert rc == 0, summary.getvalue()
    return out, bad, summary.getvalue()
