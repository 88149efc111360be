"""The curation pipeline as a library: ``run_select(SelectConfig(...), out=...)`` is ``kdata select``.

The names load on first use, so the CLI can build its options from ``kdata.pipeline.config``
without importing torch.
"""

from importlib import import_module

_WHERE = {"RunOptions": "config", "SelectConfig": "config", "RunReport": "output", "run_select": "run"}

__all__ = ["RunOptions", "RunReport", "SelectConfig", "run_select"]


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'kdata.pipeline' has no attribute {name!r}")
    return getattr(import_module(f"kdata.pipeline.{_WHERE[name]}"), name)
