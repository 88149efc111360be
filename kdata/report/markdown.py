"""Markdown cells, code spans and tables for the data card (shared by its text modules).

Sample ids, labels, domains, class names, reasons and specs come from a pool, a model or a
manifest, so they can hold anything. The card shows them and never runs them as Markdown or
HTML. ``md_text`` turns a value into plain text: ``&<>`` HTML-escaped and Markdown punctuation
backslash-escaped. ``md_code`` puts a value in a code span whose backtick fence is longer than
any backtick run inside it (the CommonMark rule). Both show control characters as ``\\xNN``
(``printable``), so README.md holds no raw ESC/BEL. ``printable`` also serves terminal output.
``md_table`` escapes every cell that is not already Markdown (``Md``) and the ``|`` of every cell.
"""

from __future__ import annotations

import re

from kdata.core.errors import printable

__all__ = ["Md", "fmt", "md_code", "md_table", "md_text", "printable"]

_MD_PUNCT = re.compile(r"([\\`*_\[\]!~])")  # inline Markdown syntax: emphasis, code, links, images
_HTML = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}


class Md(str):
    """Markdown that kdata wrote or already escaped: ``md_table`` puts it in a cell as it is."""


def fmt(x, nd: int = 3) -> str:
    """A card cell: ``–`` for None, floats to ``nd`` decimals, anything else its ``str`` (raw: not escaped)."""
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return str(x)


def md_text(value) -> Md:
    """``value`` as inline Markdown that renders as exactly its (printable) text."""
    s = _MD_PUNCT.sub(r"\\\1", printable(value))
    return Md("".join(_HTML.get(ch, ch) for ch in s))


def md_code(value) -> Md:
    """``value`` (printable) as a code span: a fence longer than its longest backtick run, padded with a
    space where it starts or ends with a backtick (CommonMark strips one space each side)."""
    s = printable(value)
    fence = "`" * (max((len(r) for r in re.findall("`+", s)), default=0) + 1)
    pad = " " if not s or s[0] == "`" or s[-1] == "`" or (s[0] == s[-1] == " " and s.strip()) else ""
    return Md(f"{fence}{pad}{s}{pad}{fence}")


def _cell(v) -> str:
    return (v if isinstance(v, Md) else md_text(fmt(v))).replace("|", "\\|")


def md_table(header: list[str], rows: list[list]) -> list[str]:
    """A Markdown table's lines: headers as written, cells through ``fmt`` and ``md_text`` unless ``Md``."""
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(_cell(v) for v in r) + " |" for r in rows]
    return out
