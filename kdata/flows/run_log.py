"""kdata's warnings inside flow and task runs go to the Prefect log of the run that issues them.

A served or deployed run has no terminal: a ``KdataWarning`` printed in Python's default format
on a worker's stderr (a Dask worker's, say) is seen by nobody. Within a kdata flow or task, each
becomes the one line the CLI prints (``kdata: warning: …``), logged with the run's logger, so it
shows in the UI and in ``prefect flow-run logs`` (a ``KdataNote`` at INFO, a warning at WARNING).
The route is a context variable (``kdata.core.warn.routed``): it holds for the task's own context,
in whatever thread or process runs it, and leaves the process's warning filters alone.
"""

from __future__ import annotations

import functools
import sys

from kdata.core.warn import KdataNote, line, routed


def to_run_log(message, category) -> None:
    """Log a kdata warning with the current run's logger (printed as its line outside a run)."""
    from prefect import get_run_logger
    from prefect.exceptions import MissingContextError

    text = line(message, category)
    try:
        logger = get_run_logger()
    except MissingContextError:
        print(text, file=sys.stderr, flush=True)
        return
    (logger.info if issubclass(category, KdataNote) else logger.warning)(text)


def logs_warnings(fn):
    """``fn`` (a flow or task body, under its ``@flow``/``@task``) with its kdata warnings in the run's log."""
    @functools.wraps(fn)
    def run(*args, **kwargs):
        with routed(to_run_log):
            return fn(*args, **kwargs)

    return run
