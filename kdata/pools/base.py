"""The pool's units: independently readable pieces that each yield a pool-schema table."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import pyarrow as pa

from kdata.dataset.schema import POOL_SCHEMA

@dataclass
class PoolUnit:
    name: str  # readable, unique within the pool
    read: Callable[[], pa.Table]  # -> pool-schema table
    fingerprint: Callable[[], str]  # content hash of the unit
    path: str | None = None


@dataclass
class Pool:
    spec: str
    units: list[PoolUnit]
    class_names: list[str] | None = None  # known from the pool itself (folders), else None
    description: str = ""
    extra: dict = field(default_factory=dict)

    def read_all(self) -> pa.Table:
        tables = [u.read() for u in self.units]
        if not tables:
            return POOL_SCHEMA.empty_table()
        return pa.concat_tables(tables)


_READERS: list[tuple[Callable[[str], bool], Callable[[str], Pool]]] = []


def register_reader(claims: Callable[[str], bool]):
    """Decorator: ``fn(spec) -> Pool`` opens pool specs for which ``claims(spec)`` is true."""

    def deco(fn):
        _READERS.append((claims, fn))
        return fn

    return deco


def readers() -> list[tuple[Callable[[str], bool], Callable[[str], Pool]]]:
    """The registered ``(claims, open)`` pairs, in registration order."""
    return list(_READERS)
