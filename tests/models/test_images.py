"""What a model sees from deep and rotated files (``kdata.models.images.upright_8bit``): a 16-bit PNG,
a 16-bit PGM (mode ``I``) and a float TIFF decode like their 8-bit twin, not as a black-and-white
clip; a picture stored sideways with an EXIF Orientation decodes upright. Real files written with
Pillow, decoded by the scoring path and classified by the built-in teacher."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from kdata.models.images import decode_multi, decode_multi_u8, gpu_jpeg_pixels, orientation, upright_8bit
from tests.models.deep_images import (STORE, digits, encode, pgm16, png8, png16, stored_with_orientation, tiff_float,
                                      wide)

N = 24


def _u8(data: bytes, key) -> np.ndarray:
    return decode_multi_u8(data, [key])[key].numpy().astype(int)


def _preds(model, files: list[bytes]) -> np.ndarray:
    key = model.preprocess_key
    with torch.no_grad():
        logits, _ = model.forward(torch.stack([decode_multi(d, [key])[key] for d in files]))
    return logits.argmax(1).numpy()


@pytest.mark.parametrize("deep", [png16, pgm16, tiff_float], ids=["png-I;16", "pgm-I", "tiff-F"])
def test_deep_greys_decode_like_their_8bit_twin(builtin_models, deep):
    teacher, _ = builtin_models
    x, _ = digits(N)
    for a in x:
        assert np.abs(_u8(deep(a), teacher.preprocess_key) - _u8(png8(a), teacher.preprocess_key)).max() <= 1
        for key in (((3, 32, 32), (0.5,) * 3, (0.5,) * 3, "bilinear"), ((1, 20, 20), (0.5,), (0.5,), "bicubic")):
            assert np.abs(_u8(deep(a), key) - _u8(png8(a), key)).max() <= 1  # RGB and resized alike
    eight, sixteen = _preds(teacher, [png8(a) for a in x]), _preds(teacher, [deep(a) for a in x])
    assert (eight == sixteen).all()


def test_16bit_keeps_its_high_byte_and_is_not_clipped():
    ramp = np.arange(0, 65536, 257, dtype=np.uint16).reshape(16, 16)  # every 8-bit level, × 257
    for a in (ramp, np.array([[0, 255, 256, 511, 32767, 65280, 65535]], np.uint16)):
        im = Image.open(io.BytesIO(encode(Image.fromarray(a))))
        out = np.asarray(upright_8bit(im))
        assert out.dtype == np.uint8 and (out == a >> 8).all()
    assert out.tolist() == [[0, 0, 1, 1, 127, 255, 255]]
    assert len(np.unique(np.asarray(upright_8bit(Image.fromarray(ramp))))) == 256  # Pillow's convert: 2
    f = Image.fromarray(np.array([[-0.5, 0.0, 0.5, 1.0, 2.0, np.nan]], np.float32))
    assert np.asarray(upright_8bit(f)).tolist() == [[0, 0, 128, 255, 255, 0]]  # F: 0…1, clipped, NaN → 0
    i32 = Image.fromarray(np.array([[-7, 0, 255, 256, 65535, 10 ** 6]], np.int32))
    assert np.asarray(upright_8bit(i32)).tolist() == [[0, 0, 0, 1, 255, 255]]  # I: as 16-bit data
    rgb = Image.new("RGB", (3, 2), (1, 2, 3))
    assert upright_8bit(rgb) is rgb  # 8-bit, no orientation: untouched, no copy


@pytest.mark.parametrize("o", sorted(STORE))
def test_every_exif_orientation_decodes_upright(builtin_models, o):
    teacher, _ = builtin_models
    x, _ = digits(4)
    for a in x:
        upright = wide(a)
        stored = stored_with_orientation(upright, o, "PNG")  # lossless: the very same pixels
        assert Image.open(io.BytesIO(stored)).size != upright.size or o in (2, 3, 4)
        for key in (teacher.preprocess_key, ((3, 24, 40), (0.5,) * 3, (0.5,) * 3, "bilinear")):
            assert (_u8(stored, key) == _u8(encode(upright), key)).all()


@pytest.mark.parametrize("o", [3, 6, 8])
def test_an_exif_rotated_jpeg_decodes_like_its_upright_original(builtin_models, o):
    """Stored 4× the model input, so both go through the reduced-scale (``draft``) JPEG decode first."""
    teacher, _ = builtin_models
    x, _ = digits(N)
    ups = [encode(wide(a, 4), "JPEG", quality=95) for a in x]
    rotated = [stored_with_orientation(wide(a, 4), o, "JPEG", quality=95) for a in x]
    for u, r in zip(ups, rotated):
        assert orientation(Image.open(io.BytesIO(r))) == o
        diff = np.abs(_u8(r, teacher.preprocess_key) - _u8(u, teacher.preprocess_key))
        assert diff.mean() < 0.5 and diff.max() <= 8  # JPEG error only (measured ≤ 1; sideways: a mean ≥ 60)
    assert (_preds(teacher, rotated) == _preds(teacher, ups)).all()


def test_rotated_jpegs_are_left_to_the_cpu_decoder():
    """nvJPEG ignores EXIF: a rotated JPEG is decoded by Pillow (upright), not on the GPU."""
    a = digits(1)[0][0]
    upright = encode(wide(a, 4), "JPEG", quality=95)
    assert gpu_jpeg_pixels(upright, None) == 192 * 128
    assert gpu_jpeg_pixels(stored_with_orientation(wide(a, 4), 6, "JPEG", quality=95), None) == 0
    exif = Image.Exif()
    exif[0x0112] = 1  # upright, tagged as such: still the GPU's
    assert gpu_jpeg_pixels(encode(wide(a, 4), "JPEG", quality=95, exif=exif), None) == 192 * 128
