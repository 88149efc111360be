"""The batched device preprocessing: weight matrices that reproduce torch's antialiased resize and
the reduced-scale decode's box reduction, padded chunks, and the JPEG structure check that keeps
files nvJPEG would wrongly accept on the CPU decoder."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from kdata.models.gpu_decode import box_weights, padded_chunks, preprocess, resize_weights, separable
from kdata.models.images import gpu_jpeg_pixels, jpeg_structure_ok


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "nearest"])
def test_resize_weights_reproduce_torch_interpolate(interpolation):
    rng = np.random.default_rng(0)
    sizes = [(37, 52), (224, 224), (20, 17), (300, 129)]  # down, equal, up, mixed
    x = torch.zeros((len(sizes), 2, 300, 224))
    for n, (h, w) in enumerate(sizes):
        x[n, :, :h, :w] = torch.from_numpy(rng.integers(0, 256, (2, h, w)).astype(np.float32))
    hs, ws = (torch.tensor([s[i] for s in sizes]) for i in (0, 1))
    got = separable(x, resize_weights(hs, 64, 300, interpolation), resize_weights(ws, 48, 224, interpolation))
    mode, aa = ("nearest-exact", {}) if interpolation == "nearest" else \
        (interpolation, {"antialias": True, "align_corners": False})
    for n, (h, w) in enumerate(sizes):
        want = F.interpolate(x[n:n + 1, :, :h, :w], size=(64, 48), mode=mode, **aa)[0]
        assert torch.allclose(got[n], want, atol=2e-3), (interpolation, h, w, (got[n] - want).abs().max())


def test_equal_size_is_the_identity_exactly():
    x = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (1, 3, 40, 30)).astype(np.float32))
    for interpolation in ("bilinear", "bicubic", "nearest"):
        y = separable(x, resize_weights(torch.tensor([40]), 40, 40, interpolation),
                      resize_weights(torch.tensor([30]), 30, 30, interpolation))
        assert torch.equal(y, x)


def test_box_weights_reproduce_avg_pool_with_ceil_mode():
    rng = np.random.default_rng(2)
    sizes, factors = [(33, 50), (64, 64), (7, 9)], [4, 2, 1]
    x = torch.zeros((3, 1, 64, 64))
    for n, (h, w) in enumerate(sizes):
        x[n, :, :h, :w] = torch.from_numpy(rng.integers(0, 256, (1, h, w)).astype(np.float32))
    f = torch.tensor(factors)
    hs, ws = torch.tensor([s[0] for s in sizes]), torch.tensor([s[1] for s in sizes])
    got = separable(x, box_weights(hs, f, 33, 64), box_weights(ws, f, 50, 64))
    for n, ((h, w), k) in enumerate(zip(sizes, factors)):
        want = F.avg_pool2d(x[n:n + 1, :, :h, :w], k, k, ceil_mode=True)[0]
        assert torch.allclose(got[n, :, :want.shape[1], :want.shape[2]], want, atol=1e-3)
        assert not got[n, :, want.shape[1]:, :].any() and not got[n, :, :, want.shape[2]:].any()  # padding stays zero


def test_padded_chunks_bound_the_padded_batch():
    sizes = [(10, 10), (10, 40), (40, 10), (20, 20), (100, 100)]
    chunks = padded_chunks(list(range(5)), sizes, 1600)
    assert sorted(i for c in chunks for i in c) == list(range(5))
    for c in chunks:
        top = max(sizes[i][0] for i in c) * max(sizes[i][1] for i in c)
        assert len(c) == 1 or len(c) * top <= 1600
    assert [4] in chunks  # larger than the limit alone: a chunk of its own


def test_preprocess_does_not_depend_on_the_other_images_in_the_batch():
    rng = np.random.default_rng(3)
    images = [torch.from_numpy(rng.integers(0, 256, (3, h, w), dtype=np.uint8)) for h, w in
              [(50, 70), (300, 200), (64, 64), (31, 99), (128, 512)]]
    keys = [((3, 48, 48), (0.5,) * 3, (0.25,) * 3, "bicubic"), ((1, 32, 32), (0.5,), (0.5,), "bilinear")]
    together = preprocess(images, keys)
    for i, im in enumerate(images):
        alone = preprocess([im], keys)
        for k in keys:
            assert together[k].shape == (5, *k[0])
            # pixel levels agree; only a value at an exact half level may round the other way
            levels = (together[k][i] - alone[k][0]).abs() * k[2][0] * 255
            assert levels.max() <= 1.001 and (levels > 0.5).float().mean() < 1e-3


def _jpeg(seed: int = 0) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def test_jpeg_structure_check_sends_damaged_files_to_the_cpu_decoder():
    good = _jpeg()
    sos = good.index(b"\xff\xda")
    assert jpeg_structure_ok(good) and jpeg_structure_ok(good + b"\x00" * 7)  # zero padding after the end
    assert gpu_jpeg_pixels(good, None) == 48 * 64
    truncated = good[: len(good) // 2]
    frame_in_scan = good[:sos + 30] + b"\xff\xc0\x00\x11" + good[sos + 34:]
    second_soi = good[:sos + 30] + b"\xff\xd8" + good[sos + 32:]
    for bad in (truncated, frame_in_scan, second_soi, good[:sos] + b"\xff\xd9"):
        assert not jpeg_structure_ok(bad) and gpu_jpeg_pixels(bad, None) == 0
    progressive = io.BytesIO()
    Image.open(io.BytesIO(good)).save(progressive, format="JPEG", progressive=True, quality=85)
    assert jpeg_structure_ok(progressive.getvalue())  # tables and scans between scans are fine


def test_padding_in_one_kernel_matches_copying_each_image():
    from kdata.models.gpu_decode import padded

    rng = np.random.default_rng(4)
    images = [torch.from_numpy(rng.integers(0, 256, (3, h, w), dtype=np.uint8)) for h, w in [(5, 9), (12, 4), (7, 7)]]
    want = torch.zeros((3, 3, 12, 10))
    for n, im in enumerate(images):
        want[n, :, :im.shape[1], :im.shape[2]] = im
    for dtype in (torch.float32, torch.float16):
        got = padded(images, 12, 10, dtype)
        assert got.dtype == dtype and torch.equal(got.float(), want)


def test_half_precision_resize_stays_within_a_grey_level_of_fp32():
    """bf16 runs on CUDA resize in float16 (``resize_dtype``): at most one level off, on few pixels."""
    from kdata.models.gpu_decode import resize_dtype

    assert resize_dtype("bf16", torch.device("cuda")) == torch.float16
    assert resize_dtype("bf16", torch.device("cpu")) == resize_dtype("fp32", torch.device("cuda")) == torch.float32
    rng = np.random.default_rng(5)
    sizes = [(90, 120), (64, 64), (130, 70)]
    x = torch.zeros((3, 3, 130, 120))
    for n, (h, w) in enumerate(sizes):
        x[n, :, :h, :w] = torch.from_numpy(rng.integers(0, 256, (3, h, w)).astype(np.float32))
    hs, ws = [s[0] for s in sizes], [s[1] for s in sizes]
    for interpolation in ("bilinear", "bicubic"):
        full = separable(x, resize_weights(hs, 48, 130, interpolation), resize_weights(ws, 40, 120, interpolation))
        half = separable(x.half(), resize_weights(hs, 48, 130, interpolation, dtype=torch.float16),
                         resize_weights(ws, 40, 120, interpolation, dtype=torch.float16))
        off = (full.round() - half.float().round()).abs()
        assert off.max() <= 1 and (off > 0).float().mean() < 0.15, (interpolation, (off > 0).float().mean())
