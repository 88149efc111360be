"""KD³ re-selection during training (``kdata.pipeline.distill.make_reselector``) streams the pool.

The pool is scored unit by unit through the per-unit score cache, never read whole and kept for all of
training, and the re-selection keeps exactly the rows that scoring the whole pool in one table keeps.
Real Parquet files (the built-in pool copied to a folder of 4 files), the real built-in models.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from kdata.models.spec import load_model
from kdata.pipeline.config import SelectConfig
from kdata.pipeline.curate import Scored, finish
from kdata.pipeline.distill import make_reselector
from kdata.pipeline.prepare import Prepared
from kdata.pools.spec import open_pool
from kdata.scoring.score import ScoreConfig, score_table

TEACHER = "builtin:digits-teacher"


def _pool_dir(tmp_path):
    """The built-in pool's 4 Parquet parts, copied into a folder pool of 4 units."""
    d = tmp_path / "pool"
    d.mkdir()
    for u in open_pool("builtin:digits-web").units:
        shutil.copy(u.path, d / Path(u.path).name)
    return d


def _decisions(out):
    return pq.read_table(out / "decisions.parquet").sort_by("sample_id")


def _whole_table_reselection(pool_dir, student, *, epoch, budget, out):
    """What re-selection did before it streamed: score the whole pool read into one table, then finish."""
    pool, teacher = open_pool(str(pool_dir)), load_model(TEACHER)
    cfg_scores = ScoreConfig(topk=5, temperature=1.0, embeddings=False)
    current = dataclasses.replace(student, spec=f"{student.spec}@epoch{epoch}", checksum=f"training:{epoch}")
    scores, quarantined = score_table(pool.read_all(), teacher, current, config=cfg_scores)
    cfg = SelectConfig(pool=str(pool_dir), teacher=TEACHER, student=current.spec, method="kd3",
                       budget=str(min(budget, scores.num_rows)), seed=0, topk=5, temperature=1.0)
    prep = Prepared(cfg=cfg, pool=pool, teacher=teacher, student=current, methods=["kd3"], balance=None,
                    score_cfg=cfg_scores, device="cpu")
    finish(prep, Scored(scores=scores, quarantined=quarantined, info={"n_in": scores.num_rows, "units": 4}),
           out=str(out))
    return _decisions(out)


def test_reselection_holds_no_pool_rows_and_keeps_what_whole_pool_scoring_keeps(tmp_path):
    pool_dir = _pool_dir(tmp_path)
    image_bytes = sum(pq.read_table(p, columns=["image"]).nbytes for p in pool_dir.glob("*.parquet"))
    student = load_model("builtin:digits-student")
    before = pa.total_allocated_bytes()
    reselect = make_reselector(pool=str(pool_dir), teacher=TEACHER, work_dir=tmp_path / "w", device="cpu")
    # nothing of the pool stays in (Arrow) memory for the rest of training: not even a tenth of its images
    assert pa.total_allocated_bytes() - before < image_bytes / 10, (pa.total_allocated_bytes() - before, image_bytes)

    student.module.train()
    out, info = reselect(student, epoch=1, budget=300)
    assert info["rows"] == 300 and student.module.training  # scored in eval mode, then put back
    student.module.eval()
    ref = _whole_table_reselection(pool_dir, student, epoch=1, budget=300, out=tmp_path / "ref")
    got = _decisions(out)
    kept = pc.equal(got.column("decision"), "kept")
    assert pc.sum(kept).as_py() == 300
    assert got.equals(ref)  # same kept set, same reasons, ranks and scores, row for row

    # each unit was scored into the per-unit score cache under the student's current weights:
    # the same weights again are all cache hits, and changed weights are scored afresh
    out2, _ = reselect(student, epoch=2, budget=300)
    assert json.loads((out2 / "manifest.json").read_text())["score_cache_hits"] == 4
    assert _decisions(out2).column("sample_id").equals(got.column("sample_id"))
    with torch.no_grad():
        next(student.module.parameters()).add_(0.05)
    out3, _ = reselect(student, epoch=3, budget=300)
    assert json.loads((out3 / "manifest.json").read_text())["score_cache_hits"] == 0
