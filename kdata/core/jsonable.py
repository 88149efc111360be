"""JSON helpers shared by every writer: plain JSON values and one config hash."""

from __future__ import annotations

import hashlib
import json


def jsonable(obj):
    """``obj`` as plain JSON values: numpy scalars become Python numbers, anything else its ``str``."""
    return json.loads(json.dumps(obj, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def config_hash(config: dict) -> str:
    """sha256 of ``config`` as canonical JSON (sorted keys): the identity of a run's output."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()
