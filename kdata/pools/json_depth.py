"""How deeply a JSON text nests, checked without parsing it.

Python's ``json`` recurses once per ``[`` or ``{``, so a line nested 100,000 deep raises
``RecursionError`` (and a line near the interpreter's limit parses or not depending on how deep
the caller's stack is). The JSONL readers use a fixed limit instead, ``MAX_DEPTH``, the same
whatever the stack: a line nested deeper is one with a problem (a pool quarantines it, a prompt
file is refused), and pyarrow's reader, which has no such limit, is not used for a file that may
hold one (``may_nest_deeper``), so both readers give the same table.
"""

from __future__ import annotations

import re

import numpy as np

MAX_DEPTH = 500  # far above real data, far below Python's recursion limit (1,000 frames)

_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)


def nesting_depth(text: bytes | str) -> int:
    """The deepest ``[``/``{`` nesting of one JSON text (brackets inside strings not counted)."""
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    bare = np.frombuffer(_STRING.sub(b"", data), np.uint8)
    step = ((bare == ord("[")) | (bare == ord("{"))).astype(np.int32)
    step -= (bare == ord("]")) | (bare == ord("}"))
    return int(np.cumsum(step).max(initial=0))


def too_deep(line: bytes | str, limit: int = MAX_DEPTH) -> bool:
    """Whether one JSON line nests deeper than ``limit`` (counted only for a line with more than
    ``limit`` opening brackets: nesting that deep needs that many)."""
    if line.count(b"[" if isinstance(line, bytes) else "[") + line.count(b"{" if isinstance(line, bytes) else "{") \
            <= limit:
        return False
    return nesting_depth(line) > limit


def may_nest_deeper(data: bytes, limit: int = MAX_DEPTH, *, objects: int = 0) -> bool:
    """Whether some line of ``data`` holds more than ``limit`` opening brackets, so that it may nest
    deeper than ``limit`` (no line can without them); never a false "no". ``objects``: how many lines
    are known to hold a JSON object, one ``{`` each (pyarrow's reader read that many rows). Counted
    with ``bytes.count`` first (a file of flat objects stops there), then per line (a few tenths of
    a second per 64 MiB)."""
    opens = data.count(b"[") + data.count(b"{")
    if opens - max(objects - 1, 0) <= limit:  # a line past the limit needs limit + 1, the other objects one each
        return False
    a = np.frombuffer(data, np.uint8)
    is_open = a == ord("[")
    is_open |= a == ord("{")
    at = np.flatnonzero(is_open)
    ends = np.flatnonzero(a == ord("\n"))
    per_line = np.diff(np.searchsorted(at, np.concatenate(([0], ends, [len(a)]))))
    return bool((per_line > limit).any())
