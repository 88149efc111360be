"""The default recipe: what ``--method`` omitted (registry name ``default``) runs.

Evidence (``python benchmarks/quality.py``, builtin:digits-web, 3 seeds, student clean-test
accuracy; the table is in docs/benchmarks/quality.md): Robust Active Distillation (``rad``) with the budget
spread evenly over the teacher's predicted classes is the best chain at 10% and 30% of the pool
(0.832 and 0.884 vs random 0.783 and 0.869). ``kd3`` keeps the most *clean* rows
(``benchmarks/precision.py``) but they are the easy ones and pile onto a few classes, so a
student trained on them learns less. Class balance alone gives most of the 10% gain.
"""

from __future__ import annotations

DEFAULT_CHAIN = ["rad"]
DEFAULT_BALANCE = "class"  # used when --balance is not given


def default_recipe(cfg) -> list[str]:
    """Method chain of the default recipe."""
    return list(DEFAULT_CHAIN)
