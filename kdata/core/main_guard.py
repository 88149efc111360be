"""One clear line instead of a hang when a script without a ``__main__`` guard starts kdata's workers.

kdata's decode and feature workers come from a fork server (``kdata.models.images.worker_context``),
and Python's fork server imports the script that started it (as ``__mp_main__``) before it forks a
worker. A script whose top-level code calls ``run_select`` therefore runs again inside the fork
server, where it would start a second run into the same ``--out`` and a fork server of its own:
a traceback about a run "in use", a worker that "exited unexpectedly", or a hang. While Python
imports the main script for a child process, ``multiprocessing`` marks the process as inheriting;
kdata checks that mark where a run starts and where workers start, and stops with the fix.
"""

from __future__ import annotations


HINT = ("kdata was called while Python imported your script inside a worker process (the fork server "
        "that starts kdata's decode workers imports the main script): put the script's top-level code "
        "under `if __name__ == \"__main__\":`")


def check_not_importing_main() -> None:
    """Stop when this process is importing the main script for a child process: the child prints
    ``HINT`` as one line and exits (``SystemExit``, which the fork server does not print as a
    traceback, as it would an exception); the run in the main process reports the workers' end."""
    import multiprocessing
    import sys

    if getattr(multiprocessing.current_process(), "_inheriting", False):
        print(f"kdata: a worker process could not start: {HINT}", file=sys.stderr, flush=True)
        raise SystemExit(2)


def unguarded_script() -> str | None:
    """The main script's path when it has no ``if __name__ == "__main__":`` guard (None otherwise, or for
    an interactive session, ``python -c`` and ``python -m``): where workers that died at start most
    likely re-ran it."""
    import sys

    path = getattr(sys.modules.get("__main__"), "__file__", None)
    if not path or not str(path).endswith(".py"):
        return None
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            source = f.read(1 << 20)
    except OSError:
        return None
    return None if "__main__" in source else str(path)
