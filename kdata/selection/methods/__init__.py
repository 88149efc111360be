"""Selection methods: a registry mapping names to implementations with one interface.

A method is ``fn(view, *, budget, seed, **options) -> MethodResult``. ``view`` is a ``ScoreView``
(numpy columns of the scores table). A *ranker* returns a score per row (higher = keep first) and
the framework takes the top ``budget``; a *filter* returns a keep mask (and a score) and is
applied before the ranker. Methods register with ``@register(name, kind=..., doc=...)``.

A method's options are the keyword parameters of its function, less what the chain runner passes
itself (``INJECTED``); ``check_options`` refuses any other name with one line, so a typo
(``treshold``) fails before any work instead of being ignored by the method's ``**_``.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
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
    kind: str  # "ranker" | "filter" | "sampler"
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
    """Every registered selection method by name (sorted): a ``Method`` with its ``kind`` (``ranker``,
    ``filter`` or ``sampler``), one-line ``doc`` (naming its paper) and ``fn``; the names
    ``kdata.selection.run.select`` and ``kdata select --method`` accept, and what ``kdata methods`` lists.
    A method's options: ``option_names(name)``."""
    _load()
    return dict(sorted(METHODS.items()))


def _load() -> None:
    import importlib
    import pkgutil

    for mod in pkgutil.iter_modules(__path__):
        if not mod.name.startswith("_"):
            importlib.import_module(f"{__name__}.{mod.name}")


INJECTED = frozenset({"view", "budget", "seed", "alive", "deduped"})  # passed by the chain runner itself


def option_names(name: str) -> list[str]:
    """The options method ``name`` takes: its function's named parameters less ``INJECTED``."""
    params = inspect.signature(get_method(name).fn).parameters.values()
    return sorted(p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
                  and p.name not in INJECTED)


def check_options(name: str, options, *, where: str = "options") -> None:
    """One KdataError line when ``options`` is not a mapping or names an option ``name`` does not take."""
    if not isinstance(options, Mapping):
        raise KdataError(f"{where}: {name}: expected a mapping of option → value, got {type(options).__name__}")
    known = option_names(name)
    unknown = sorted(str(k) for k in options if k not in known)
    if unknown:
        raise KdataError(f"{where}: {name} has no option '{unknown[0]}' (known: {', '.join(known) or 'none'})")


def check_chain_options(methods: list[str], options, *, where: str = "method_options",
                        others_ok: bool = False, chain: str | None = None) -> None:
    """``options`` (method name → options) checked against the chain ``methods``: a method outside the
    chain is refused (``others_ok``: ignored, for callers sharing one mapping over several chains), and
    each method's options must be its own. ``chain``: how the error names the chain (default: its methods)."""
    if not isinstance(options, Mapping):
        raise KdataError(f"{where}: expected a mapping of method name → options, got {type(options).__name__}")
    for name, opts in options.items():
        if name in methods:
            check_options(name, opts, where=where)
        elif not others_ok:
            raise KdataError(f"{where}: {name} is not in the method chain ({chain or ','.join(methods)})")
