"""The parts HARD is built from, each on its own: parameter space, augmentation, filters and accounting."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kdata.augment.filtering import CRITIC_REJECT, FLIP, check_generated_accounting, critic_filter, generated_counts
from kdata.augment.params import PARAM_NAMES, HardConfig, init_theta, param_ranges, squash
from kdata.augment.search import GRADIENT, RANDOM_SEARCH, search_mode
from kdata.augment.transforms import png_bytes, render
from kdata.core.errors import KdataError
from kdata.models.spec import Model


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


def test_identity_values_render_the_image_unchanged_and_png_round_trips():
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    ident = torch.tensor([[1.0 if n in ("scale", "contrast") else 0.0 for n in PARAM_NAMES]] * 3)
    y = render(x, ident, torch.randn(x.shape, generator=torch.Generator().manual_seed(1)), max_sigma=1.0)
    assert torch.allclose(y, x, atol=1e-4)
    moved = ident.clone()
    moved[:, PARAM_NAMES.index("rotation_deg")] = 15.0
    assert (render(x, moved, torch.zeros_like(x), max_sigma=1.0) - x).abs().max() > 0.05
    png = png_bytes(x)
    assert len(png) == 3 and all(b.startswith(b"\x89PNG") for b in png)


def test_flips_are_rejected_first_then_the_critic_decides_and_the_counts_add_up():
    flipped = np.array([True, False, False, False, True])
    parts = [{"score": np.array([0.9, 0.9]), "conf": np.array([1.0, 1.0])},
             {"score": np.array([0.2, 0.6, 0.1]), "conf": np.array([0.5, 0.5, 0.5])}]
    out = critic_filter(flipped, threshold=0.5, default_parts=parts)
    assert out.reason.tolist() == [FLIP, None, CRITIC_REJECT, None, FLIP]
    assert out.accepted.tolist() == [False, True, False, True, False]
    assert out.kind == "default" and out.threshold == 0.5 and set(out.components) == {"score", "conf"}
    counts = generated_counts(out, flipped, n_parents=5, skipped=1)
    assert counts == {"generated": 5, "generated_kept": 2, "generated_rejected": 3,
                      "generated_rejected_by_reason": {FLIP: 2, CRITIC_REJECT: 1},
                      "hard_parents": 5, "hard_parents_skipped": 1}
    with pytest.raises(RuntimeError, match="do not add up"):
        check_generated_accounting({**counts, "generated_rejected_by_reason": {FLIP: 2}})


def test_a_trained_critic_never_runs_when_every_row_flipped():
    def table():
        raise AssertionError("the scores table must not be built")

    out = critic_filter(np.array([True, True]), threshold=0.5, default_parts=[], critic="some/dir", scores_table=table)
    assert out.reason.tolist() == [FLIP, FLIP] and out.threshold is None and np.isnan(out.score).all()


def test_search_mode_follows_the_models(builtin_models):
    teacher, student = builtin_models
    assert isinstance(teacher, Model)
    assert search_mode(HardConfig(), teacher, student) == (GRADIENT if teacher.differentiable and
                                                          student.differentiable else RANDOM_SEARCH)
    assert search_mode(HardConfig(random_search=True), teacher, student) == RANDOM_SEARCH
