"""Where a folder pool's units begin and end: content-defined boundaries, so edits stay local.

Units are the grain of the score cache, so their boundaries decide what an edited pool costs to
rescore. Fixed runs of N sorted files move every later boundary when one file is inserted early
in the order (a new image in the first class folder rescored nearly the whole pool). Here a
unit ends after a file whose path hashes to 0 modulo (mean − minimum) — the anchor idea of
content-defined chunking (Muthitacharoen et al., "A Low-bandwidth Network File System", SOSP
2001), with file paths in place of byte windows — so a boundary depends on the names around it,
not on how many files precede it. Inserting or removing a file changes the unit that holds it
(and at most its neighbour, when the file is itself an anchor). A minimum (a quarter of the mean)
keeps units from being tiny; a maximum (four times the mean) bounds a unit where no anchor falls.
"""

from __future__ import annotations

import hashlib


def _anchor(name: str, mean: int) -> bool:
    digest = hashlib.blake2b(name.encode("utf-8", "surrogateescape"), digest_size=8).digest()
    return int.from_bytes(digest, "little") % mean == 0


def content_cuts(names: list[str], *, mean: int) -> list[tuple[int, int]]:
    """``[start, stop)`` ranges over ``names`` (sorted file paths): a cut after each anchor name once the
    unit holds ``mean // 4`` names, so units average ``mean``; at most ``4 * mean`` (the last may be shorter)."""
    if mean < 1:
        raise ValueError(f"mean unit size {mean}: must be ≥ 1")
    lo, hi = max(1, mean // 4), 4 * mean
    cuts, start = [], 0
    for i, name in enumerate(names):
        size = i + 1 - start
        if size >= hi or (size >= lo and _anchor(name, mean - lo + 1)):
            cuts.append((start, i + 1))
            start = i + 1
    if start < len(names):
        cuts.append((start, len(names)))
    return cuts


def fixed_cuts(n: int, *, size: int) -> list[tuple[int, int]]:
    """``[start, stop)`` runs of exactly ``size`` (the last one shorter): for benchmarks and tests that
    need a known number of units."""
    return [(i, min(i + size, n)) for i in range(0, n, size)]
