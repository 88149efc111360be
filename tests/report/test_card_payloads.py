"""The card and ``kdata inspect`` read the ``image`` / ``text`` payloads of the rows they show only: a
payload column chunk of any other row group is wrecked on disk, and they still write the same bytes."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from PIL import Image

from kdata.cli import main
from kdata.pools.spec import open_pool
from kdata.report.card import write_card
from kdata.report.card_plots import fetch_payloads, thumbnail_blocks
from kdata.report.html import report_rows
from kdata.report.inspect import Run, load_run, sample, summarise
from tests.helpers.damage import wreck_chunks


def _groups_of(path: Path, ids) -> set[int]:
    """The row groups of ``path`` that hold ``ids``."""
    f = pq.ParquetFile(path)
    at = np.flatnonzero(pc.is_in(f.read(columns=["sample_id"]).column("sample_id"),
                                 value_set=pa.array(sorted(ids), pa.string())).to_numpy(zero_copy_only=False))
    ends = np.cumsum([f.metadata.row_group(g).num_rows for g in range(f.metadata.num_row_groups)])
    return set(np.searchsorted(ends, at, side="right").tolist())


def _card_bytes(out: Path, dest: Path) -> dict:
    write_card(out, dest=dest, name="ds")
    return {p.name: p.read_bytes() for p in sorted(dest.iterdir())}


def test_image_card_and_inspect_read_only_the_pictured_payloads(demo_run, tmp_path):
    out = tmp_path / "ds"
    shutil.copytree(demo_run, out)
    shard = next((out / "data").glob("*.parquet"))
    pq.write_table(pq.read_table(shard), shard, row_group_size=2)  # same rows, 219 row groups
    ref_card, ref_summary = _card_bytes(out, tmp_path / "ref"), summarise(out, check=False)
    run = load_run(out)
    best = thumbnail_blocks(run)[0][1][0]["sample_id"]
    ref_sample = sample(out, best)
    pictured = {r["sample_id"] for _, rows, _ in thumbnail_blocks(run) for r in rows} | \
        {r["id"] for r in report_rows(run)}
    spare = sorted(set(range(pq.ParquetFile(shard).metadata.num_row_groups)) - _groups_of(shard, pictured))
    assert len(spare) >= 50
    wreck_chunks(shard, "image", spare)
    with pytest.raises((OSError, pa.ArrowException)):
        pq.read_table(shard)  # reading every payload fails now
    assert _card_bytes(out, tmp_path / "wrecked") == ref_card
    assert sample(out, best) == ref_sample and ref_sample["shard_row"]["image"].endswith("bytes>")
    wreck_chunks(shard, "image", sorted(_groups_of(shard, pictured)))  # no image readable at all: summaries need none
    assert load_run(out).shard_error is None and summarise(out, check=False) == ref_summary


def _text_run(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "gamma", "data", "model", "teacher", "student", "token", "cat", "dog"]
    ids = [f"t{i:03d}" for i in range(60)]
    lines = [json.dumps({"sample_id": s, "text": f"{i} " + " ".join(rng.choice(words, 12)), "domain": f"d{i % 3}"})
             for i, s in enumerate(ids)]
    (tmp_path / "pool.jsonl").write_text("\n".join(lines) + "\n")
    pq.write_table(pa.table({"sample_id": ids, "teacher_logprob": rng.normal(-2, 0.5, 60).astype(np.float32),
                             "reference_logprob": rng.normal(-2.5, 0.5, 60).astype(np.float32)}),
                   tmp_path / "s.parquet")
    out = tmp_path / "ds"
    assert main(["select", "--scores", str(tmp_path / "s.parquet"), "--pool", str(tmp_path / "pool.jsonl"),
                 "--method", "miniplm", "--budget", "0.3", "--row-group-rows", "5", "--out", str(out), "--quiet"]) == 0
    return out


def test_text_card_and_inspect_read_only_the_shown_texts(tmp_path):
    out = _text_run(tmp_path)
    shard = next((out / "data").glob("*.parquet"))
    ref_card, ref_summary = _card_bytes(out, tmp_path / "ref"), summarise(out, check=False)
    assert [r["rank"] for r in ref_summary["text"]["kept_texts"]] == [0, 1, 2, 3, 4]  # the first row group
    wreck_chunks(shard, "text", range(1, pq.ParquetFile(shard).metadata.num_row_groups))
    with pytest.raises((OSError, pa.ArrowException)):
        pq.read_table(shard)
    assert summarise(out, check=False) == ref_summary
    assert _card_bytes(out, tmp_path / "wrecked") == ref_card


def _png(i: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8), i, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_rejected_thumbnails_read_only_their_pool_rows(tmp_path):
    path = tmp_path / "pool.parquet"
    ids = [f"p{i:03d}" for i in range(100)]
    pq.write_table(pa.table({"sample_id": ids, "image": [_png(i) for i in range(100)], "label": ["a"] * 100}), path,
                   row_group_size=10)
    want = ["p023", "p071", "p075"]
    wreck_chunks(path, "image", sorted(set(range(10)) - _groups_of(path, want)))  # the other row groups' images
    run = Run(out=tmp_path, manifest={"config": {"pool": str(path)}}, decisions=None, shards=None)
    found, note = fetch_payloads(run, want, pool=open_pool(str(path)))
    assert note is None and found == {i: _png(int(i[1:])) for i in want}


def test_inspect_of_a_shard_whose_shown_texts_are_damaged_reports_and_exits_1(tmp_path, capsys):
    """The texts inspect shows lie in a damaged page: the summary is still printed, with the shard
    under integrity, and the exit code is 1 (it was one error line, exit 2, no report)."""
    out = _text_run(tmp_path)
    shard = next((out / "data").glob("*.parquet"))
    wreck_chunks(shard, "text", [0])  # the best-ranked rows' group
    capsys.readouterr()
    assert main(["inspect", str(out)]) == 1
    printed = capsys.readouterr().out
    assert "integrity: FAILED" in printed and "curated rows in 1 shard" in printed
