"""Splice a benchmark's Markdown table into its docs page, between ``<!-- bench:NAME:begin/end -->``.

Each benchmark has one page, ``docs/benchmarks/NAME.md``; the script that measures the figures
writes them there, so the published table is always the one the command last produced.
"""

from __future__ import annotations

import re
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs" / "benchmarks"


def markers(name: str) -> tuple[str, str]:
    """The begin and end markers of block ``name``."""
    return f"<!-- bench:{name}:begin -->", f"<!-- bench:{name}:end -->"


def splice(name: str, markdown: str, *, page: Path | None = None) -> bool:
    """Replace block ``name`` in ``page`` (default ``docs/benchmarks/NAME.md``) with ``markdown``.

    Returns False, and leaves the page alone, when the page or its markers are absent.
    """
    page = DOCS / f"{name}.md" if page is None else Path(page)
    if not page.is_file():
        return False
    text = page.read_text()
    begin, end = markers(name)
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.DOTALL)
    if not pattern.search(text):
        return False
    page.write_text(pattern.sub(lambda _: f"{begin}\n{markdown.strip()}\n{end}", text))
    return True
