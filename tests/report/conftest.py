"""A run of the previous default recipe (RAD, balanced by class): the case whose card regenerated with
``method_info`` keys reordered and whose best-ranked thumbnails were junk textures."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def rad_run(tmp_path_factory, builtin_models) -> Path:
    from kdata.pipeline.config import RunOptions, SelectConfig
    from kdata.pipeline.run import run_select

    out = tmp_path_factory.mktemp("rad") / "out"
    run_select(SelectConfig(method="rad", balance="class", budget="0.3"), out=str(out), opts=RunOptions(device="cpu"))
    return out
