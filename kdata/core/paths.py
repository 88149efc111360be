"""Where kdata keeps its cache (built-in pool, built-in models, scores, Prefect results)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """The cache directory, first match wins: ``$KDATA_CACHE``; ``$XDG_CACHE_HOME/kdata`` (an absolute
    path, as the XDG base-directory spec requires); the platform's user cache directory for kdata
    (``platformdirs.user_cache_dir``: ``~/.cache/kdata`` on Linux, ``~/Library/Caches/kdata`` on macOS)."""
    own = os.environ.get("KDATA_CACHE")
    if own:
        return Path(own).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "kdata"
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("kdata", appauthor=False))


def cache_dir(*parts: str) -> Path:
    """``cache_root()`` joined with ``parts``, created."""
    path = cache_root().joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def only_mine(path: Path) -> bool:
    """Whether no one but this user can change ``path``: owned by the effective uid and not writable by
    group or others (POSIX; True where there are no uids)."""
    if not hasattr(os, "geteuid"):
        return True
    try:
        st = os.stat(path)
    except OSError:
        return False
    return st.st_uid == os.geteuid() and not st.st_mode & 0o022


def private_cache_dir(*parts: str) -> Path | None:
    """``cache_dir(*parts)`` for what kdata *runs or unpickles* from its cache (a compiled library,
    Prefect's task results): made private (0700) when this user owns it, and returned only then. None
    otherwise (a directory of another user's, in a cache shared with others): the caller keeps such
    content out of it, since whoever can write there could run code as this user. (A directory swapped
    in by someone who can write the cache root is theirs, not this user's, so it fails the check too.)"""
    path = cache_dir(*parts)
    if hasattr(os, "geteuid"):
        try:
            if os.stat(path).st_uid == os.geteuid():
                path.chmod(0o700)
        except OSError:
            return None
    return path if only_mine(path) else None


def spec_text(spec, *, what: str) -> str:
    """A pool or model spec as its string: a ``pathlib.Path`` (any ``os.PathLike``) works where a path
    string does; anything else is one line naming ``what`` it was meant to be."""
    if isinstance(spec, os.PathLike):
        return os.fspath(spec)
    if not isinstance(spec, str):
        from kdata.core.errors import KdataError

        raise KdataError(f"{what} spec {spec!r}: expected a path or spec string")
    return spec
