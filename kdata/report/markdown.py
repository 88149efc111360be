"""Markdown cells and tables for the data card (shared by its text modules)."""

from __future__ import annotations

__all__ = ["fmt", "md_table"]


def fmt(x, nd: int = 3) -> str:
    """A card cell: ``–`` for None, floats to ``nd`` decimals, anything else its ``str``."""
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return str(x)


def md_table(header: list[str], rows: list[list]) -> list[str]:
    """A Markdown table's lines (cells through ``fmt``)."""
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return out
