"""The per-process model cache of the flows' tasks: tasks pass specs and checksums, never models.

A task loads each model it needs through ``cached_model``; a later task in the same process reuses
it. The checksum a task expects (the one recorded when the flow began) is checked on every call: a
cached model with another checksum is loaded again, and a model whose files were replaced while the
flow ran is one clear error rather than a run that mixes two models.
"""

from __future__ import annotations

from collections.abc import Callable

from kdata.core.errors import KdataError

_MODELS: dict = {}


def cached_model(spec: str, *, device, checksum: str | None = None, load: Callable | None = None, **kw):
    """``load(spec, device=device, **kw)`` (``kdata.models.spec.load_model`` by default) through the
    per-process cache, keyed by the loader, spec, device and ``kw`` (text models: precision,
    trust_remote_code, max_length); with ``checksum``, the model returned has that checksum."""
    if load is None:
        from kdata.models.spec import load_model as load
    key = (load, spec, str(device), *sorted(kw.items()))
    m = _MODELS.get(key)
    if m is None or (checksum and m.checksum != checksum):
        m = load(spec, device=device, **kw)
        if checksum and m.checksum != checksum:
            raise KdataError(f"{spec}: model changed while the flow ran (checksum {m.checksum[:12]} != {checksum[:12]})")
        _MODELS[key] = m
    return m
