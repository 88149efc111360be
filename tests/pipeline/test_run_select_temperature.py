"""``kdata select`` keeps what it kept before the scores table recorded its temperature: the pipeline
selects at the temperature it scored at, so the view reads the stored statistics as it always did.

The run through ``run_select`` (the CLI's path) is compared with the same stages fed the scores with the
record removed — the selection of earlier versions, which had none — byte for byte."""

from __future__ import annotations

import dataclasses

import pyarrow.parquet as pq
import pytest

from kdata.core.stats import recorded_temperature
from kdata.pipeline.config import RunOptions, SelectConfig
from kdata.pipeline.curate import finish
from kdata.pipeline.prepare import prepare
from kdata.pipeline.run import run_select, score


def kept_ids(out) -> list[str]:
    dec = pq.read_table(f"{out}/decisions.parquet", columns=["sample_id", "decision"]).to_pylist()
    return sorted(r["sample_id"] for r in dec if r["decision"] == "kept")


@pytest.mark.parametrize("method,temperature", [("default", 1.0), ("rad", 1.0), ("rad", 2.0)])
def test_run_select_keeps_the_same_rows_as_before(method, temperature, tmp_path):
    cfg = SelectConfig(pool="builtin:digits-web", method=method, budget="0.3", temperature=temperature)
    opts = RunOptions(device="cpu")
    now = run_select(cfg, out=str(tmp_path / "now"), opts=opts)
    prep = prepare(cfg, opts=opts)
    scored = score(prep, opts=opts)
    assert recorded_temperature(scored.scores) == temperature
    before = dataclasses.replace(scored, scores=scored.scores.replace_schema_metadata(None))
    finish(prep, before, out=str(tmp_path / "before"))
    assert now.counts["kept"] == 437 and kept_ids(tmp_path / "now") == kept_ids(tmp_path / "before")
    for name in ("decisions.parquet", "data/train-00000-of-00001.parquet"):
        assert (tmp_path / "now" / name).read_bytes() == (tmp_path / "before" / name).read_bytes()


def test_bring_your_own_scores_record_their_temperature_and_select_alike(tmp_path):
    """``load_scores`` records the temperature its statistics were derived at: selecting at it reads them,
    at another one re-derives them, as the bare logits give."""
    import numpy as np
    import pyarrow as pa

    from kdata.scoring.byo import load_scores
    from kdata.selection.run import select

    rng = np.random.default_rng(0)
    n, c = 300, 7
    t, s = rng.normal(0, 3, (n, c)).astype(np.float32), rng.normal(0, 2, (n, c)).astype(np.float32)
    table = pa.table({"sample_id": [f"r{i}" for i in range(n)],
                      "teacher_logits": pa.array(list(t), type=pa.list_(pa.float32())),
                      "student_logits": pa.array(list(s), type=pa.list_(pa.float32()))})
    pq.write_table(table, tmp_path / "preds.parquet")
    scores, C, _ = load_scores(str(tmp_path / "preds.parquet"), temperature=2.0)
    assert C == c and recorded_temperature(scores) == 2.0
    bare = scores.select(["sample_id", "teacher_logits", "student_logits"])
    for temp in (2.0, 0.5):
        a = select(scores, methods=["rad"], budget=60, num_classes=c, temperature=temp).kept
        b = select(bare, methods=["rad"], budget=60, num_classes=c, temperature=temp).kept
        assert (np.asarray(a) == np.asarray(b)).all(), temp
