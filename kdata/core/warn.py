"""kdata's warnings and notes, issued through Python's ``warnings`` module.

A library caller filters or records them like any other warning (``KdataWarning``; ``KdataNote`` for
what is said to inform, not to alarm: ``warnings.simplefilter("ignore", KdataNote)``). The ``kdata``
command and the flow scripts show each as the one line it always was, ``kdata: warning: …`` or
``kdata: note: …`` on stderr, every time it is issued (``shown_as_lines``).
"""

from __future__ import annotations

import sys
import warnings
from contextlib import contextmanager
from contextvars import ContextVar


class KdataWarning(UserWarning):
    """Something a run went on through that may change what it gives (a damaged cache entry dropped,
    a file column read another way than it looks)."""


class KdataNote(KdataWarning):
    """Something a run says so its output reads right (rows left out of a measure, a tokenizer mismatch)."""


_ROUTE: ContextVar = ContextVar("kdata_warning_route", default=None)


def warn(message: str, *, note: bool = False, stacklevel: int = 2) -> None:
    """Issue ``message`` as a ``KdataWarning`` (``note=True``: a ``KdataNote``), attributed to the caller;
    within ``routed(to)``, hand it to ``to`` instead."""
    category = KdataNote if note else KdataWarning
    route = _ROUTE.get()
    if route is not None:
        route(message, category)
        return
    warnings.warn(message, category, stacklevel=stacklevel + 1)


@contextmanager
def routed(to):
    """Within it — in this thread or task's context only, other threads and the process's warning
    filters untouched — kdata warnings go to ``to(message, category)`` instead of the ``warnings``
    module (a flow run's log: ``kdata.flows.run_log``)."""
    token = _ROUTE.set(to)
    try:
        yield
    finally:
        _ROUTE.reset(token)


def line(message, category) -> str:
    """The one line a command prints for a kdata warning: ``kdata: note: …`` / ``kdata: warning: …``."""
    from kdata.core.errors import printable

    kind = "note" if issubclass(category, KdataNote) else "warning"
    return f"kdata: {kind}: {printable(' '.join(str(message).split()))}"


@contextmanager
def shown_as_lines():
    """Within it, every kdata warning is printed as one line on stderr (each time, not once per place);
    other warnings are shown as they would have been. Restores the warnings state on exit."""
    with warnings.catch_warnings():
        previous = warnings.showwarning
        warnings.simplefilter("always", KdataWarning)

        def show(message, category, filename, lineno, file=None, line_=None):
            if issubclass(category, KdataWarning):
                print(line(message, category), file=sys.stderr, flush=True)
            else:
                previous(message, category, filename, lineno, file, line_)

        warnings.showwarning = show
        yield


def shows_lines(fn):
    """``fn`` (a script's ``main``) run within ``shown_as_lines``."""
    import functools

    @functools.wraps(fn)
    def run(*args, **kwargs):
        with shown_as_lines():
            return fn(*args, **kwargs)

    return run
