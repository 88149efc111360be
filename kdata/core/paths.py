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
