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
