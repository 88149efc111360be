"""Where kdata keeps its cache (built-in pool, built-in models, scores)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    """``$KDATA_CACHE`` (default ``~/.cache/kdata``) joined with ``parts``, created."""
    root = Path(os.environ.get("KDATA_CACHE") or Path.home() / ".cache" / "kdata")
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
