"""The default recipe: what ``--method`` omitted (registry name ``default``) runs.

Chosen by the quality benchmark (``benchmarks/quality.py``); see the README for the evidence.
"""

from __future__ import annotations


def default_recipe(cfg) -> list[str]:
    """Method chain of the default recipe."""
    return ["kd3"]
