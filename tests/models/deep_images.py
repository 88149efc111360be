"""Real image files of the built-in digits, written with Pillow, for the decode tests: 8-bit PNGs and
their 16-bit / 32-bit-integer / float twins, and pictures stored sideways with an EXIF Orientation.

Shared by tests/models, tests/dedup and tests/report (this module holds no tests itself)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from kdata.pools import builtin

T = Image.Transpose
# what to do to an upright picture to store it so that EXIF Orientation ``o`` shows it upright again
# (``exif_transpose`` applies the inverse: 6 → ROTATE_270, 8 → ROTATE_90, the flips undo themselves)
STORE = {2: T.FLIP_LEFT_RIGHT, 3: T.ROTATE_180, 4: T.FLIP_TOP_BOTTOM, 5: T.TRANSPOSE, 6: T.ROTATE_90,
         7: T.TRANSVERSE, 8: T.ROTATE_270}


def digits(n: int, offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(n, 32, 32) uint8 digits of the built-in test split and their labels."""
    x, y = builtin.split_arrays("test")
    return x[offset:offset + n], y[offset:offset + n]


def encode(im: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def png8(a: np.ndarray) -> bytes:
    return encode(Image.fromarray(a))


def png16(a: np.ndarray) -> bytes:
    """The same picture as a 16-bit greyscale PNG (each level v stored as v·257, so v = level >> 8)."""
    data = encode(Image.fromarray(a.astype(np.uint16) * 257))
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    return data


def pgm16(a: np.ndarray) -> bytes:
    """A 16-bit PGM, which Pillow opens as 32-bit integer mode ``I``."""
    data = encode(Image.fromarray(a.astype(np.uint16) * 257), "PPM")
    assert Image.open(io.BytesIO(data)).mode == "I"
    return data


def tiff_float(a: np.ndarray) -> bytes:
    """A float TIFF (mode ``F``) holding the levels as 0…1."""
    data = encode(Image.fromarray(a.astype(np.float32) / 255.0), "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "F"
    return data


def wide(a: np.ndarray, scale: int = 1) -> Image.Image:
    """The digit on a 3:2 canvas (not square, so a missed rotation shows in the size too), RGB, scaled."""
    canvas = np.zeros((a.shape[0], a.shape[1] * 3 // 2), np.uint8)
    canvas[:, :a.shape[1]] = a
    im = Image.fromarray(canvas).convert("RGB")
    return im.resize((im.width * scale, im.height * scale), Image.BICUBIC) if scale != 1 else im


def stored_with_orientation(upright: Image.Image, orientation: int, fmt: str, **kw) -> bytes:
    """``upright`` stored turned (as a camera writes it) with the EXIF Orientation that turns it back."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(upright.transpose(STORE[orientation]), fmt, exif=exif, **kw)
