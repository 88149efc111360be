"""A run that no step of which reads the teacher embeddings leaves them in the score cache
(``ScoreConfig.load_embeddings=False``, scale review finding 15): the entries are computed, keyed and
written exactly as before, so switching methods never rescores, and only the run's table is slimmer."""

import hashlib

import pyarrow.parquet as pq

from kdata.pools.spec import open_pool
from kdata.scoring.score import ScoreConfig, score_pool, unit_cache_key, unit_scores
from tests.helpers.real_inputs import make_parquet_units


def _entries(cache) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((cache / "scores").glob("*.parquet"))}


def test_entries_keep_embeddings_the_run_table_does_not(cache, builtin_models, tmp_path):
    teacher, student = builtin_models
    pool = open_pool(str(make_parquet_units(tmp_path / "pool", units=2, rows=30)))
    slim_cfg, full_cfg = ScoreConfig(batch_size=16, load_embeddings=False), ScoreConfig(batch_size=16)
    # the same cache key: loading is the run's choice, not part of what is cached
    assert all(unit_cache_key(u, teacher, student, slim_cfg) == unit_cache_key(u, teacher, student, full_cfg)
               for u in pool.units)

    slim, q_slim, info = score_pool(pool, teacher, student, config=slim_cfg)  # cold: scores and caches both units
    assert info["cache_hits"] == 0 and slim.num_rows == 60
    assert "embedding" not in slim.column_names
    written = _entries(cache)
    assert len(written) == 2
    for name in written:  # the entries written by the slim run still hold the embeddings
        assert "embedding" in pq.read_schema(cache / "scores" / name).names

    full, q_full, info = score_pool(pool, teacher, student, config=full_cfg)  # a method that reads them: hits
    assert info["cache_hits"] == 2 and "embedding" in full.column_names
    assert slim.equals(full.drop_columns(["embedding"])) and q_slim == q_full
    again, _, info = score_pool(pool, teacher, student, config=slim_cfg)
    assert info["cache_hits"] == 2 and again.equals(slim)
    assert _entries(cache) == written  # no entry rewritten by either kind of run


def test_unit_scores_reads_every_other_column(cache, builtin_models, tmp_path):
    teacher, student = builtin_models
    pool = open_pool(str(make_parquet_units(tmp_path / "pool", units=1, rows=20)))
    score_pool(pool, teacher, student, config=ScoreConfig(batch_size=16))
    [path] = (cache / "scores").glob("*.parquet")
    full = unit_scores(path)
    slim = unit_scores(path, embedding=False)
    assert full.column_names[-1] == "embedding" and len(full.column("embedding")[0]) == 128
    assert slim.column_names == full.column_names[:-1]
    assert slim.equals(full.drop_columns(["embedding"]))


def test_a_unit_whose_rows_are_all_quarantined_scores_with_the_others(tmp_path):
    """Its cache entry has no embedding column (the width comes from a row): the pool's scores still
    concatenate (it was ``ArrowInvalid: Schema at index 1 was different``)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from kdata.models.spec import load_model
    from kdata.pools.spec import open_pool
    from kdata.scoring.score import ScoreConfig, score_pool
    from tests.helpers.real_inputs import digits, png_bytes

    x, y = digits(30)
    (tmp_path / "pool").mkdir()
    pq.write_table(pa.table({"sample_id": [f"g{i}" for i in range(30)], "image": [png_bytes(x[i]) for i in range(30)],
                             "label": [str(v) for v in y[:30]]}), tmp_path / "pool" / "a.parquet")
    pq.write_table(pa.table({"sample_id": [f"b{i}" for i in range(5)], "image": [b"not an image"] * 5,
                             "label": ["1"] * 5}), tmp_path / "pool" / "b.parquet")
    teacher, student = load_model("builtin:digits-teacher"), load_model("builtin:digits-student")
    scores, quarantined, _ = score_pool(open_pool(str(tmp_path / "pool")), teacher, student, config=ScoreConfig())
    assert scores.num_rows == 30 and len(quarantined) == 5 and "embedding" in scores.column_names
