"""kdata: curate training data for knowledge distillation."""

__version__ = "0.1.0"
