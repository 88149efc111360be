"""kdata.training.batch_jitter: the training-time affine jitter of a decoded batch."""

import torch

from kdata.training.batch_jitter import jitter


def batch(n=6, size=16):
    x = torch.zeros(n, 3, size, size)
    x[:, :, 4:12, 6:10] = 1.0  # a bar off-centre, so rotation and shift move pixels
    return x


def test_same_seed_same_batch_and_shape_kept():
    x = batch()
    a = jitter(x, torch.Generator().manual_seed(3))
    b = jitter(x, torch.Generator().manual_seed(3))
    assert a.shape == x.shape
    assert torch.equal(a, b)
    assert not torch.equal(a, jitter(x, torch.Generator().manual_seed(4)))


def test_each_image_gets_its_own_draw_and_zero_limits_change_nothing():
    x = batch()
    out = jitter(x, torch.Generator().manual_seed(0))
    assert not torch.allclose(out[0], out[1])  # same input image, different draws
    assert (out - x).abs().max() > 0.1
    still = jitter(x, torch.Generator().manual_seed(0), degrees=0.0, scale=0.0, shift=0.0)
    assert torch.allclose(still, x, atol=1e-5)
