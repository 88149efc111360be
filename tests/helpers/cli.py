"""``kdata ARGS`` run in the test's own process: the CLI's exit code, stdout and stderr without the
seconds a fresh interpreter spends importing torch. Tests about the entry point's own process (exit
status of ``python -m kdata.cli``, signals, locks held by the test) use a subprocess instead."""

from __future__ import annotations

import contextlib
import io
import os


def kdata(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``kdata ARGS``; ``env``: variables set for the call, then restored."""
    from kdata.cli import main

    out, err = io.StringIO(), io.StringIO()
    saved = {k: os.environ.get(k) for k in env or {}}
    os.environ.update(env or {})
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main([str(a) for a in args])
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return code, out.getvalue(), err.getvalue()
