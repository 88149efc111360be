"""JSON helpers shared by every writer: plain JSON values, one config hash, and how two configs differ."""

from __future__ import annotations

import hashlib
import json


def jsonable(obj):
    """``obj`` as plain JSON values: numpy scalars become Python numbers, anything else its ``str``."""
    return json.loads(json.dumps(obj, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def config_hash(config: dict) -> str:
    """sha256 of ``config`` as canonical JSON (sorted keys): the identity of a run's output."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


def differences(there: dict, here: dict, *, prefix: str = "") -> list[tuple[str, object, object]]:
    """``(key, there's value, here's value)`` for every key on which two configs differ, in key order;
    nested mappings are compared key by key (``train.epochs``)."""
    out = []
    for k in sorted(set(there) | set(here)):
        a, b = there.get(k), here.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, prefix=f"{prefix}{k}.")
        elif a != b:
            out.append((f"{prefix}{k}", a, b))
    return out
