"""Callers that need a pool's domains, or the texts of a few ids, read only those: a Parquet pool whose
payload column chunks they do not need are wrecked on disk still gives the same domains, ddk picks,
texts and card sections (scale review findings 1, 8, 11: these read every unit whole before)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kdata.pipeline.critic import apply_table
from kdata.core.errors import KdataError
from kdata.dedup.text import pool_texts
from kdata.pipeline import text as text_pipeline
from kdata.pipeline.needs import pool_domains
from kdata.pools.spec import open_pool
from kdata.report.inspect import Run
from kdata.report.text_run import text_summary
from kdata.scoring.byo import load_scores
from kdata.selection.balance import attach_domain
from kdata.selection.critic_text import texts_from_pool
from kdata.selection.run import select
from tests.helpers.damage import wreck_chunks
from tests.helpers.methods import write_predictions
from tests.helpers.real_inputs import digits, png_bytes

N = 30  # rows s000…s029 in row groups of 10; domain d<i % 3>
IDS = [f"s{i:03d}" for i in range(N)]
DOMS = [f"d{i % 3}" for i in range(N)]
TEXTS = [f"text {i}: " + "words " * (i + 3) for i in range(N)]


def _write(path, payload: dict, *, domains=DOMS, ids=IDS):
    cols = {"sample_id": ids, **payload}
    if domains is not None:
        cols["domain"] = pa.array(domains, pa.string())
    pq.write_table(pa.table(cols), path, row_group_size=10, compression="NONE")
    return path


def _images(path):
    x, y = digits(N)
    return _write(path, {"image": [png_bytes(x[i]) for i in range(N)], "label": [str(v) for v in y[:N]]})


def _texts(path, **kw):
    return _write(path, {"text": TEXTS}, **kw)


def test_ddk_domains_are_read_without_the_images(tmp_path):
    path = _images(tmp_path / "pool.parquet")
    wreck_chunks(path, "image", range(3))
    pool = open_pool(str(path))
    with pytest.raises(KdataError, match="pool.parquet"):
        pool.units[0].read()  # the images cannot be read at all
    dom = pool_domains(pool)
    assert dom.column("sample_id").to_pylist() == IDS and dom.column("domain").to_pylist() == DOMS
    rng = np.random.default_rng(0)
    t, s = rng.normal(size=(N, 3)) * 3, rng.normal(size=(N, 3)) * 3
    bare = load_scores(write_predictions(tmp_path / "p.parquet", t, s, ids=IDS))[0]
    given = load_scores(write_predictions(tmp_path / "q.parquet", t, s, ids=IDS, domain=DOMS))[0]
    got = select(bare, methods=["ddk"], budget=12, seed=0, num_classes=3, options={"ddk": {"domains": dom}})
    want = select(given, methods=["ddk"], budget=12, seed=0, num_classes=3)
    assert got.kept.tolist() == want.kept.tolist() and got.kept.sum() == 12
    # --balance domain: the same lookup, in the scores' order (an id outside the pool: no domain)
    order = [7, 29, 0, 13]
    scores = pa.table({"sample_id": [IDS[i] for i in order] + ["elsewhere"]})
    assert attach_domain(scores, pool).column("domain").to_pylist() == [DOMS[i] for i in order] + [None]


def test_pool_without_a_domain_column_gives_null_domains(tmp_path):
    path = _images(tmp_path / "pool.parquet")
    bare = _write(tmp_path / "bare.parquet", {"image": pq.read_table(path).column("image")}, domains=None)
    wreck_chunks(bare, "image", range(3))
    dom = pool_domains(open_pool(str(bare)))
    assert dom.column("sample_id").to_pylist() == IDS and dom.column("domain").null_count == N


def test_text_default_balance_reads_domains_only_up_to_the_first_unit_with_one(tmp_path):
    root = tmp_path / "pool"
    root.mkdir()
    _texts(root / "a.parquet", domains=[None] * N)
    _texts(root / "b.parquet", ids=[f"b{i}" for i in range(N)])
    (root / "c.parquet").write_bytes(b"not parquet at all")  # never reached
    for f in ("a.parquet", "b.parquet"):
        wreck_chunks(root / f, "text", range(3))
    assert text_pipeline._has_domains(open_pool(str(root)))
    assert not text_pipeline._has_domains(open_pool(str(root / "a.parquet")))


def test_texts_of_a_few_ids_read_only_their_row_groups(tmp_path):
    path = _texts(tmp_path / "pool.parquet")
    wreck_chunks(path, "text", [1])
    pool = open_pool(str(path))
    want = [25, 3, 0, 29]
    out = pool_texts(pool, np.array([IDS[i] for i in want], dtype=object))
    assert out.tolist() == [TEXTS[i] for i in want]
    assert texts_from_pool(pool, [IDS[i] for i in want]) == [TEXTS[i] for i in want]
    with pytest.raises(KdataError, match="not found"):
        texts_from_pool(pool, ["s001", "nowhere"])
    table = apply_table(pa.table({"sample_id": ["s002"]}), [0.9], [True], texts=["given"],
                        quarantined=[("s028", "unreadable")], pool=pool)
    assert table.column("text").to_pylist() == ["given", TEXTS[28]]
    with pytest.raises(KdataError, match="pool.parquet"):
        pool_texts(pool, np.array(["s015"], dtype=object))  # a wrecked row group is read when asked for


def test_dedup_texts_stop_at_the_unit_holding_the_last_id(tmp_path):
    root = tmp_path / "pool"
    root.mkdir()
    _texts(root / "a.parquet")
    (root / "b.parquet").write_bytes(b"not parquet at all")
    assert pool_texts(open_pool(str(root)), np.array(["s004", "s001"], dtype=object)).tolist() == [TEXTS[4], TEXTS[1]]


def _text_run(tmp_path, path) -> Run:
    kept = list(range(20, N))
    dec = pa.table({"sample_id": IDS, "decision": ["kept" if i in kept else "rejected" for i in range(N)],
                    "reason": [None if i in kept else "low_score" for i in range(N)]})
    shards = pa.table({"sample_id": [IDS[i] for i in kept], "rank": list(range(len(kept))),
                       "domain": [DOMS[i] for i in kept], "text": [TEXTS[i] for i in kept]})
    return Run(out=tmp_path, manifest={"pool": {"spec": str(path)}}, decisions=dec, shards=shards,
               pool=open_pool(str(path)))


def test_text_card_reads_the_domain_column_and_the_picked_texts_only(tmp_path):
    path = _texts(tmp_path / "pool.parquet")
    wreck_chunks(path, "text", [1, 2])
    run = _text_run(tmp_path, path)
    s = text_summary(run, pick=lambda n: [3, 7])
    assert s["note"] is None
    assert [r["text"] for r in s["rejected_texts"]] == [" ".join(TEXTS[i].split()) for i in (3, 7)]
    mix = {r["domain"]: (r["pool"], r["kept"]) for r in s["domain_mixture"]}
    assert mix == {"d0": (10, 3), "d1": (10, 3), "d2": (10, 4)}  # kept: s020…s029
    # a picked row whose text cannot be read: the card says so once, as when the pool is gone
    s = text_summary(run, pick=lambda n: [3, 15])
    assert "could not be read back (KdataError)" in s["note"]
    assert [r["text"] for r in s["rejected_texts"]] == [None, None]
    assert {r["pool"] for r in s["domain_mixture"]} == {None}


def test_a_pool_naming_one_id_twice_is_refused_before_any_work(tmp_path, capsys):
    """With --scores, two pool rows with one id would give a kept id two payloads (it was an IndexError)."""
    import json

    import numpy as np

    from kdata.cli import main

    lines = [json.dumps({"sample_id": f"q{i % 9}", "text": f"text {i}"}) for i in range(10)]  # q0 twice
    (tmp_path / "dup.jsonl").write_text("\n".join(lines) + "\n")
    rng = np.random.default_rng(0)
    pq.write_table(pa.table({"sample_id": [f"q{i}" for i in range(9)],
                             "teacher_logprob": rng.normal(-2, 0.5, 9).astype(np.float32),
                             "reference_logprob": rng.normal(-2.5, 0.5, 9).astype(np.float32)}), tmp_path / "s.parquet")
    assert main(["select", "--scores", str(tmp_path / "s.parquet"), "--pool", str(tmp_path / "dup.jsonl"),
                 "--method", "miniplm", "--budget", "0.5", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "sample_id 'q0' occurs more than once in the pool" in err
    assert not (tmp_path / "o").exists()
