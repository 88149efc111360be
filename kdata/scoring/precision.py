"""``--precision``: the recorded choice of arithmetic for scoring (kept free of torch, for option parsing)."""

from __future__ import annotations

from kdata.core.errors import KdataError

PRECISIONS = ("auto", "fp32", "bf16")


def check_precision(precision) -> str:
    """``--precision``: auto, fp32 or bf16; else one line."""
    if precision not in PRECISIONS:
        raise KdataError(f"--precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    return precision
