"""Selection fixtures: builtin:digits-web scored once per session through the pipeline."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def digits_web_scored(builtin_models):
    """(Prepared, scores table) of builtin:digits-web, scored on the CPU by the pipeline's own stage."""
    from kdata.pipeline.config import RunOptions, SelectConfig
    from kdata.pipeline.prepare import prepare
    from kdata.pipeline.run import score

    cfg = SelectConfig(pool="builtin:digits-web", budget="0.3")
    opts = RunOptions(device="cpu")
    prep = prepare(cfg, opts=opts, load=lambda spec, device: {"builtin:digits-teacher": builtin_models[0],
                                                              "builtin:digits-student": builtin_models[1]}[spec])
    return prep, score(prep, opts=opts).scores
