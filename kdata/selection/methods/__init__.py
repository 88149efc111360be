"""Selection methods: a registry mapping names to implementations with one interface.

A method is ``fn(view, *, budget, seed, **options) -> MethodResult``. ``view`` is a ``ScoreView``
(numpy columns of the scores table). A *ranker* returns a score per row (higher = keep first) and
the framework takes the top ``budget``; a *filter* returns a keep mask (and a score) and is
applied before the ranker. Methods register with ``@register(name, kind=..., doc=...)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from kdata.core.errors import KdataError


@dataclass
class MethodResult:
    score: np.ndarray  # float64 per row; higher = better; recorded as ``score_<method>``
    keep: np.ndarray | None = None  # filters: bool mask; rankers: None (the budget decides)
    reason: str | np.ndarray | None = None  # rejection reason(s) for rows a filter drops
    info: dict = field(default_factory=dict)  # e.g. {"teacher_queries": 120, "threshold": 0.7}


@dataclass
class Method:
    name: str
    fn: Callable[..., MethodResult]
    kind: str  # "ranker" | "filter"
    doc: str
    needs: tuple[str, ...] = ()


METHODS: dict[str, Method] = {}


def register(name: str, *, kind: str = "ranker", doc: str = "", needs: tuple[str, ...] = ()):
    def deco(fn):
        METHODS[name] = Method(name=name, fn=fn, kind=kind, doc=doc or (fn.__doc__ or "").strip().split("\n")[0],
                               needs=needs)
        return fn

    return deco


def get_method(name: str) -> Method:
    _load()
    if name not in METHODS:
        raise KdataError(f"unknown method '{name}' (available: {', '.join(sorted(METHODS))})")
    return METHODS[name]


def available() -> dict[str, Method]:
    _load()
    return dict(sorted(METHODS.items()))


def _load() -> None:
    import importlib
    import pkgutil

    for mod in pkgutil.iter_modules(__path__):
        if not mod.name.startswith("_"):
            importlib.import_module(f"{__name__}.{mod.name}")
