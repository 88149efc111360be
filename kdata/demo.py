"""The demo: built-in pool + built-in teacher/student → curated shards (+ what later stages add)."""

from __future__ import annotations

from .pipeline import RunOptions, SelectConfig, run_select


def run_demo(*, out: str, budget: str = "0.3", seed: int = 0, progress=None) -> dict:
    cfg = SelectConfig(budget=budget, seed=seed)
    report = run_select(cfg, out=out, opts=RunOptions(progress=progress))
    lines = [f"  read it: pandas.read_parquet('{out}/data')   inspect it: kdata inspect {out}"]
    return {"report": report, "lines": lines, **report.to_dict()}
