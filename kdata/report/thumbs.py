"""Thumbnails of image payloads for the data card's grid and ``report.html``.

A payload is decoded by scoring's own decoder (``kdata.models.images.decode_multi_u8``): the image
is refused from its header when it is over scoring's pixel cap (``DEFAULT_MAX_PIXELS``, or the run's
lower ``--max-pixels``: ``pixel_cap``), before any pixel is decoded, so a decompression bomb costs a
header read and gets a placeholder; a JPEG is decoded at a reduced DCT scale (``Image.draft``) close
to the thumbnail's size; the result is upright and 8-bit, as scoring sees it.
"""

from __future__ import annotations

import warnings

__all__ = ["pixel_cap", "thumbnail"]


def pixel_cap(manifest: dict) -> int | None:
    """The pixel cap a run scored under (its config's ``max_pixels``), or None where it records no valid
    one; ``thumbnail`` never goes above scoring's default (a manifest is not trusted to raise it)."""
    cap = (manifest.get("config") or {}).get("max_pixels") if isinstance(manifest, dict) else None
    return cap if isinstance(cap, int) and not isinstance(cap, bool) and cap >= 1 else None


def thumbnail(data: bytes | None, px: int, *, rgb: bool = False, max_pixels: int | None = None):
    """``data`` as a PIL image fitted within ``px`` × ``px`` (aspect kept, never enlarged), grey
    (``L``) for grey payloads unless ``rgb``; None for no payload, an unreadable one or one over the
    pixel cap (``max_pixels``, at most scoring's ``DEFAULT_MAX_PIXELS``)."""
    if not data:
        return None
    from PIL import Image

    from kdata.models.images import DEFAULT_MAX_PIXELS, decode_multi_u8
    from kdata.models.pixels import SWAPPED, open_image, orientation

    try:
        with warnings.catch_warnings():  # an image past PIL's own bomb limit: refused below (or by open)
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with open_image(data) as head:  # the header only: the size and mode to ask for
                w, h = head.size
                grey = head.mode in ("1", "L", "F") or head.mode.startswith("I")
                # a PNG loads all its pixels to look for an eXIf chunk after them: not before the cap check
                late_exif = head.format == "PNG" and "exif" not in head.info
                if not late_exif and orientation(head) in SWAPPED:
                    w, h = h, w
        scale = min(1.0, px / max(w, h, 1))
        c = 3 if rgb or not grey else 1
        key = ((c, max(1, round(h * scale)), max(1, round(w * scale))), (0.0,) * c, (1.0,) * c, "lanczos")
        cap = min(max_pixels or DEFAULT_MAX_PIXELS, DEFAULT_MAX_PIXELS)
        arr = decode_multi_u8(data, [key], max_pixels=cap)[key].numpy()
    except Exception:  # noqa: BLE001 -- undecodable or over the cap (PIL raises many types): no thumbnail
        return None
    return Image.fromarray(arr[0] if c == 1 else arr.transpose(1, 2, 0))
