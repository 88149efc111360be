"""Splice a benchmark's Markdown into README.md between ``<!-- bench:NAME:begin/end -->`` markers."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def splice(name: str, markdown: str, *, readme: Path = README) -> bool:
    """Replace the block ``name`` in the README with ``markdown``; False when the markers are absent."""
    text = readme.read_text()
    begin, end = f"<!-- bench:{name}:begin -->", f"<!-- bench:{name}:end -->"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if not pattern.search(text):
        return False
    readme.write_text(pattern.sub(lambda _: f"{begin}\n{markdown.strip()}\n{end}", text))
    return True
