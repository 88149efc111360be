"""The default recipe: what ``--method`` omitted (registry name ``default``) runs.

Step by step (the rationale and references are in docs/methods.md, "The default recipe"):

1. **Dedup, exact + near** (``DEFAULT_DEDUP``): duplicates must not take budget. The pipeline turns
   it on when ``--dedup`` is left unset and the run has a pool to read payloads from; with
   ``--scores`` and no ``--pool`` there is nothing to compare and the step is skipped and recorded
   (``method_info.coverage.skipped``).
2. **Cut a small likely-junk tail** from teacher signals (low teacher max-probability, teacher–student
   KL, distance to the teacher-predicted class centroid in the teacher embedding when the scores
   have embeddings); the fraction grows as the budget shrinks (CCS, Zheng et al. 2023) and is never
   below the teacher's expected error rate; it is recorded.
3. **Stratified sampling**: strata = teacher-predicted class × equal-width difficulty bins (CCS),
   every stratum with rows gets a pick when the budget allows, the rest spread in proportion to the
   strata's sizes with a bias toward easier bins for small budgets and harder bins for large ones
   (Sorscher et al. 2022), rows inside
   a stratum chosen by their permanent random number (stable under small score changes).

Steps 2–3 are the ``coverage`` sampler (``kdata/selection/methods/coverage.py``), every parameter
recorded in its ``info`` (manifest ``method_info`` and the card). No class balance on top: the
strata already spread the budget over the predicted classes.

Why a sampler and not a ranker: ranking by one score loses coverage, and on web pools the top of
any one difficulty score is junk, shift and wrong labels; coverage-preserving sampling — CCS (Zheng
et al., "Coverage-centric Coreset Selection for High Pruning Rates", ICLR 2023, arXiv 2210.15809)
and D2-Pruning (Maharana et al., ICLR 2024, arXiv 2310.07931) — is what beats random robustly, and
with KD soft labels random is itself strong (Ben-Baruch et al., "Distilling the Knowledge in Data
Pruning", ICML 2025).
"""

from __future__ import annotations

DEFAULT_CHAIN = ["coverage"]
DEFAULT_BALANCE = None  # used when --balance is not given: the strata already cover the classes
DEFAULT_DEDUP = "near"  # exact + near duplicates, used when --dedup is not given and a pool is there


def default_recipe() -> list[str]:
    """Method chain of the default recipe."""
    return list(DEFAULT_CHAIN)


def default_dedup(cfg) -> str | None:
    """Dedup level of the default recipe: ``near`` (exact + near) when the run reads a pool, else None."""
    return DEFAULT_DEDUP if getattr(cfg, "pool", None) else None
