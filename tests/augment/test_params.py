"""The HARD parameter space (``kdata.augment.params``): ranges, the squash into them, overrides and bad bounds."""

from __future__ import annotations

import pytest
import torch

from kdata.augment.params import PARAM_NAMES, HardConfig, init_theta, param_ranges, squash
from kdata.core.errors import KdataError


def test_squash_maps_any_theta_into_the_ranges_and_the_overrides_apply():
    bounds = HardConfig(bounds=(("rotation_deg", 5.0), ("scale", 1.5))).bound_values()
    ranges = param_ranges(bounds)
    assert ranges["rotation_deg"] == (-5.0, 5.0) and ranges["scale"] == (1 / 1.5, 1.5)
    theta = torch.cat([30 * torch.randn(500, len(PARAM_NAMES), generator=torch.Generator().manual_seed(0)),
                       torch.full((1, len(PARAM_NAMES)), 50.0), torch.full((1, len(PARAM_NAMES)), -50.0)])
    v = squash(theta, bounds).numpy()
    for j, name in enumerate(PARAM_NAMES):
        lo, hi = ranges[name]
        assert v[:, j].min() >= lo - 1e-6 and v[:, j].max() <= hi + 1e-6, name
        assert v[:, j].min() < lo + 1e-3 and v[:, j].max() > hi - 1e-3, name  # the whole range is reachable
    # the seeded start sits near the identity: no blur, no noise
    start = squash(init_theta(200, torch.Generator().manual_seed(1)), bounds)
    assert start[:, PARAM_NAMES.index("blur_sigma")].mean() < 0.25 * bounds["blur_sigma"]


@pytest.mark.parametrize("bounds", [(("nope", 1.0),), (("scale", 0.9),), (("rotation_deg", 0.0),)])
def test_bad_bounds_are_one_clear_error(bounds):
    with pytest.raises(KdataError, match="HARD bounds"):
        HardConfig(bounds=bounds).bound_values()
