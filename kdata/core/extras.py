"""Optional extras: a missing one is one line naming the ``pip install`` that adds it."""

from __future__ import annotations

import importlib

from kdata.core.errors import KdataError

EXTRAS = {
    "flows": "Prefect flows and the Dask runner",
    "clip": "open_clip models (open_clip:ARCH:WEIGHTS)",
    "timm": "timm models (timm:ARCH:CHECKPOINT)",
    "gpu": "faiss GPU indexes",
    "text": "Hugging Face text models (hf:PATH, builtin:text-*)",
}


def missing(*modules: str) -> list[str]:
    """The modules of ``modules`` that cannot be imported here."""
    gone = []
    for m in modules:
        try:
            importlib.import_module(m)
        except ImportError:
            gone.append(m)
    return gone


def require(extra: str, *modules: str) -> None:
    """Raise one KdataError line when a module of ``extra`` is not installed."""
    gone = missing(*modules)
    if gone:
        raise KdataError(f"{EXTRAS.get(extra, extra)} need {', '.join(gone)}: pip install 'kdata[{extra}]'")
