"""One exception type for problems a user can fix: printed as one line, never a traceback."""


class KdataError(Exception):
    """A user-facing error. ``exit_code`` 2 for usage/input errors, 1 for runtime failures."""

    def __init__(self, message: str, *, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code


class RuntimeFailure(KdataError):
    def __init__(self, message: str):
        super().__init__(message, exit_code=1)


def brief(items, *, n: int = 4) -> str:
    """``a, b, c, …``: the first ``n`` of ``items`` for a one-line message, with an ellipsis only when cut."""
    items = [str(x) for x in items]
    return ", ".join(items[:n]) + (", …" if len(items) > n else "")


def printable(text, *, limit: int | None = None) -> str:
    """``str(text)`` (its first ``limit`` characters, given one) with every non-printable character (ESC,
    BEL, newline…) shown as ``\\xNN``: values from a pool, a model or a manifest must not drive a terminal
    or break a one-line message."""
    return "".join(ch if ch.isprintable() else f"\\x{ord(ch):02x}" for ch in str(text)[:limit])
