"""Crash points: a deterministic SIGKILL at a chosen write, for the crash-safety tests.

With ``KDATA_CRASH_AFTER`` set to a shell-style pattern (``fnmatch``; ``*`` also matches ``/``) the
process kills itself with SIGKILL — no cleanup, no ``finally``, as a power cut or the OOM killer
would — right after an event whose path matches: a file fully written under its temporary name
(``.NAME.<random>.tmp``, before the rename), the same file renamed into place, or a staging
directory created. ``tests/reliability/test_crash.py`` uses it to kill a real ``kdata select`` at
each stage of a run and check that a rerun gives the uninterrupted result. Unset — always, outside
those tests — it costs one environment lookup per file written.
"""

from __future__ import annotations

import fnmatch
import os
import signal

ENV = "KDATA_CRASH_AFTER"


def crash_after(path: str | os.PathLike) -> None:
    """SIGKILL this process when ``KDATA_CRASH_AFTER`` matches ``path`` (a no-op when it is unset)."""
    pattern = os.environ.get(ENV)
    if pattern and fnmatch.fnmatchcase(os.path.abspath(path), pattern):
        os.kill(os.getpid(), signal.SIGKILL)
