"""Summaries of a curated dataset directory: counts, class balance, score quantiles, examples."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from .errors import KdataError
from .write import read_manifest, read_shards, verify


def summarise(out: str | Path, *, n_examples: int = 5, check: bool = True) -> dict:
    """A JSON-able summary of OUT (what ``kdata inspect --json`` prints)."""
    out = Path(out)
    if not out.exists():
        raise KdataError(f"{out}: no such directory")
    manifest = read_manifest(out)
    if manifest is None:
        raise KdataError(f"{out}: not a kdata dataset (no manifest.json)")
    shards = read_shards(out)
    class_names = manifest.get("class_names") or []
    pred = shards.column("teacher_pred").to_numpy(zero_copy_only=False)
    hist = {(class_names[i] if i < len(class_names) else str(i)): int(c)
            for i, c in zip(*np.unique(pred, return_counts=True))}
    quantiles = {}
    score_cols = [c for c in shards.column_names if c.startswith("score_")] + [
        "teacher_conf", "student_conf", "kl_ts", "teacher_entropy", "student_entropy"]
    for c in score_cols:
        v = shards.column(c).to_numpy(zero_copy_only=False).astype(np.float64)
        v = v[~np.isnan(v)]
        if len(v):
            quantiles[c] = {q: float(x) for q, x in zip(("min", "p25", "p50", "p75", "max"),
                                                        np.quantile(v, [0, 0.25, 0.5, 0.75, 1]))}
    dec_path = out / manifest.get("decisions_file", "decisions.parquet")
    quarantined = []
    if dec_path.exists():
        dec = pq.read_table(dec_path, columns=["sample_id", "decision", "error"])
        mask = np.array([d == "quarantined" for d in dec.column("decision").to_pylist()])
        if mask.any():
            ids = np.array(dec.column("sample_id").to_pylist(), dtype=object)[mask]
            errs = np.array(dec.column("error").to_pylist(), dtype=object)[mask]
            quarantined = [{"sample_id": s, "error": e} for s, e in zip(ids.tolist(), errs.tolist())]
    agree = shards.column("agree").to_numpy(zero_copy_only=False)
    examples = shards.select([c for c in ("sample_id", "label", "teacher_pred", "student_pred", "teacher_conf",
                                          "kl_ts", "rank") if c in shards.column_names]).slice(0, n_examples)
    problems = verify(out) if check else []
    return {
        "out": str(out),
        "counts": manifest["counts"],
        "rows": shards.num_rows,
        "files": manifest["files"],
        "methods": manifest.get("methods"),
        "class_histogram": hist,
        "score_quantiles": quantiles,
        "teacher_student_agreement": float(np.mean(agree)) if len(agree) else None,
        "quarantined": quarantined,
        "integrity": {"ok": not problems, "problems": problems},
        "examples": examples.to_pylist(),
    }
