"""The curation pipeline as a library: ``run_select(SelectConfig(...), out=...)`` is ``kdata select``."""

from kdata.pipeline.config import RunOptions, SelectConfig
from kdata.pipeline.output import RunReport
from kdata.pipeline.run import run_select

__all__ = ["RunOptions", "RunReport", "SelectConfig", "run_select"]
