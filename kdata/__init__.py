"""kdata: curate training data for knowledge distillation."""

from kdata.core.version import __version__

__all__ = ["__version__"]
