"""The card's recipe and bias lines say how the budget was taken: the default recipe's sampler draws strata
(it ranks nothing and keeps the predicted classes' shares); a ranker keeps the top of its ranking."""

from __future__ import annotations

from kdata.report.card_biases import bias_lines, keep_step

K = {"budget": {"spec": "0.3", "rows": 437}, "seed": 0, "balance": None, "hard": 0, "method_info": {},
     "student": {"id": "s"}, "dedup": {"method": None}}


def test_the_default_recipe_samples_strata_and_says_so():
    k = {**K, "methods": ["coverage"]}
    assert keep_step(k).startswith("Sample `0.3` (437 rows) with `coverage`: cut the likeliest junk")
    lines = "\n".join(bias_lines(k, {}))
    assert "Strata, not balance" in lines and "No balancing" not in lines


def test_a_ranker_keeps_the_top():
    k = {**K, "methods": ["kd3"], "balance": "class"}
    assert keep_step(k) == "Keep the top `0.3` (437 rows), balanced by `class`; ties broken with seed 0."
    assert "No balancing" in "\n".join(bias_lines({**k, "balance": None}, {}))


def test_an_unbalanced_causal_lm_run_points_to_its_domains_not_a_class_table():
    k = {**K, "methods": ["miniplm"]}
    lines = "\n".join(bias_lines(k, {}, {"scoring": {"kind": "causal_lm"}}))
    assert "Domain shares follow" in lines and "class-balance table" not in lines
    assert "class-balance table" in "\n".join(bias_lines(k, {}, {"scoring": {"kind": "classifier"}}))
