"""kdata's warnings inside flow and task runs go to the Prefect log of the run that issues them.

A served or deployed run has no terminal: a ``KdataWarning`` printed in Python's default format
on a worker's stderr (a Dask worker's, say) is seen by nobody. Within a run, each becomes the one
line the CLI prints (``kdata: warning: …``), logged with the run's logger, so it shows in the UI
and in ``prefect flow-run logs`` (a ``KdataNote`` at INFO, a warning at WARNING); outside a run it is
printed as that line on stderr. Other warnings are shown as before.
"""

from __future__ import annotations

import sys
import warnings

from kdata.core.warn import KdataNote, KdataWarning, line


def log_warnings() -> None:
    """Route this process's kdata warnings to the issuing run's logger (idempotent; called by every
    flow and task of kdata.flows, in whatever process runs it)."""
    if getattr(warnings.showwarning, "kdata_run_log", False):
        return
    previous = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line_=None):
        if not issubclass(category, KdataWarning):
            return previous(message, category, filename, lineno, file, line_)
        from prefect import get_run_logger
        from prefect.exceptions import MissingContextError

        text = line(message, category)
        try:
            logger = get_run_logger()
        except MissingContextError:
            print(text, file=sys.stderr, flush=True)
            return None
        (logger.info if issubclass(category, KdataNote) else logger.warning)(text)
        return None

    show.kdata_run_log = True
    warnings.showwarning = show
    warnings.filterwarnings("always", category=KdataWarning)  # every time, not once per place
