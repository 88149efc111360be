"""How a decoded image is meant to be seen (upright, 8-bit), free of torch so reports can use it."""

from __future__ import annotations

import functools
import io
import re
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# The formats a payload may be opened as. Pillow picks the plugin from the bytes, not the name, and
# some plugins run programs (EPS and PostScript call Ghostscript): a pool file is never one of them.
# PPM: also PGM/PBM; MPO (the JPEGs many cameras write) where a Pillow registers it apart from JPEG.
READABLE_FORMATS = ("PNG", "JPEG", "MPO", "WEBP", "BMP", "GIF", "TIFF", "PPM")
NOT_READABLE = "not an image in a format kdata reads (PNG, JPEG, WebP, BMP, GIF, TIFF, PPM/PGM)"

DEFAULT_MAX_PIXELS = 64_000_000  # 8000 × 8000; an RGB decode of that costs ~190 MB before any resize
ORIENTATION = 0x0112  # the EXIF Orientation tag; 5–8 swap width and height
SWAPPED = frozenset({5, 6, 7, 8})


def open_image(data: bytes | None) -> Image.Image:
    """``Image.open`` of payload bytes, only as one of ``READABLE_FORMATS`` (the header is read, no pixel).

    Raises ``ValueError`` naming the formats for bytes none of them reads."""
    try:
        return Image.open(io.BytesIO(data or b""), formats=registered_formats())
    except UnidentifiedImageError:
        raise ValueError(NOT_READABLE) from None


@functools.cache
def registered_formats() -> tuple[str, ...]:
    """``READABLE_FORMATS`` this Pillow has an opener for (``Image.open`` refuses unknown names)."""
    Image.init()
    return tuple(f for f in READABLE_FORMATS if f in Image.OPEN)


def orientation(im: Image.Image) -> int:
    """An image's EXIF (or XMP) Orientation, 1 (upright) when absent, invalid or unreadable.

    Read from the header for a JPEG (before ``Image.draft``/``load``); a PNG may load itself to find
    an ``eXIf`` chunk stored after its pixels."""
    try:
        value = im.getexif().get(ORIENTATION, 1)
    except Exception:  # noqa: BLE001  (a broken EXIF block: shown as stored)
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def upright_8bit(im: Image.Image) -> Image.Image:
    """A loaded image as it is meant to be seen: upright and at most 8 bits per channel.

    The one step every decode shares (scoring, training, HARD, dedup, thumbnails). The EXIF/XMP
    Orientation is applied (``ImageOps.exif_transpose``; an image without one is returned as is, at
    no cost), then deeper greys are reduced to ``L`` by their type's full range: 16-bit (``I;16*``)
    keeps its high byte (``>> 8``), 32-bit ``I`` is read as 16-bit data (how Pillow opens a 16-bit
    PGM; clipped to 0…65535, then ``>> 8``), float ``F`` as 0…1 (clipped, NaN → 0, ×255 rounded).
    Pillow's own ``convert`` would instead clip every level above 255 to white."""
    if orientation(im) != 1:
        im = ImageOps.exif_transpose(im)
    mode = im.mode
    if mode.startswith("I;16"):
        return Image.fromarray((np.asarray(im).astype(np.uint16) >> 8).astype(np.uint8))
    if mode == "I":
        return Image.fromarray((np.clip(np.asarray(im), 0, 65535) >> 8).astype(np.uint8))
    if mode == "F":
        a = np.nan_to_num(np.asarray(im, dtype=np.float32), nan=0.0, posinf=1.0, neginf=0.0)
        return Image.fromarray(np.rint(np.clip(a, 0.0, 1.0) * 255.0).astype(np.uint8))
    return im


def open_capped(data: bytes | None, max_pixels: int | None) -> Image.Image:
    """``open_image`` (which reads only the header) refusing more than ``max_pixels`` pixels.

    The check runs on the header's size, before any pixel is decoded: a valid 13,000² PNG is
    20 KB on disk and ~500 MB once decoded to RGB. PIL's own decompression-bomb limit is raised
    to the cap when the cap is higher (never lowered), so it cannot refuse what the cap allows.
    Scoring, dedup and the report's thumbnails all open payloads through it."""
    if max_pixels is None:
        return open_image(data)
    if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < max_pixels:
        Image.MAX_IMAGE_PIXELS = max_pixels
    over = f"image is over the {max_pixels / 1e6:g}-megapixel cap (--max-pixels; "  # the size in the brackets:
    #                                                        one kind of error for every such row
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # refused below anyway
            im = open_image(data)
    except Image.DecompressionBombError as exc:
        m = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(m.group(1)) / 1e6:.3g} megapixels" if m else "too many pixels"
        raise ValueError(f"{over}{size})") from None
    w, h = im.size
    if w * h > max_pixels:
        im.close()
        raise ValueError(f"{over}{w}×{h} = {w * h / 1e6:.3g} megapixels)")
    return im
