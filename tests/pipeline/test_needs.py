"""The run's scores table holds the teacher embeddings (260 B a row for the built-in teacher, up to
4 KB for a ResNet-50) only when a step of the run reads them (scale review finding 15): the default
recipe's centroid signal, ``coverage``, ``--dedup semantic``, ``--balance cluster`` and a critic
fitted on them (``kdata.pipeline.needs.needs_embeddings``). kd3 and the other rankers leave them in
the score cache, whose entries are the same either way; the outputs are byte-identical."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from kdata.core.paths import cache_dir
from kdata.pipeline.config import RunOptions, SelectConfig
from kdata.pipeline.curate import finish
from kdata.pipeline.needs import NO_EMBEDDING, needs_embeddings
from kdata.pipeline.prepare import prepare, resolve_balance, resolve_dedup, resolve_methods
from kdata.pipeline.run import score
from kdata.pools.builtin import digits_web
from kdata.scoring.score import score_table
from kdata.selection.critic_model import feature_matrix, fit_critic
from kdata.selection.methods import available
from kdata.selection.run import select

OPTS = RunOptions(device="cpu")


def _entries() -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(cache_dir("scores").glob("*.parquet"))}


def _needs(**kw) -> bool:
    cfg = SelectConfig(budget="0.3", **kw)
    return needs_embeddings(cfg, resolve_methods(cfg), balance=resolve_balance(cfg), dedup=resolve_dedup(cfg))


def test_kd3_run_has_no_embedding_column_default_has_it(builtin_models):
    prep = prepare(SelectConfig(method="default", budget="0.3"), opts=OPTS)
    assert prep.score_cfg.load_embeddings
    assert "embedding" in score(prep, opts=OPTS).scores.column_names  # scores (or finds) the entries
    before = _entries()
    prep = prepare(SelectConfig(method="kd3", budget="0.3"), opts=OPTS)
    assert not prep.score_cfg.load_embeddings
    scored = score(prep, opts=OPTS)
    assert "embedding" not in scored.scores.column_names
    assert scored.info["cache_hits"] == scored.info["units"] == len(prep.pool.units)  # switching: no rescoring
    prep = prepare(SelectConfig(method="default", budget="0.3"), opts=OPTS)
    again = score(prep, opts=OPTS)
    assert again.info["cache_hits"] == len(prep.pool.units) and "embedding" in again.scores.column_names
    assert _entries() == before  # the cache entries are the same files, whichever method ran


@pytest.mark.parametrize("kw, loads", [
    ({"method": "default"}, True), ({"method": "coverage"}, True), ({"method": "kd3,coverage"}, True),
    ({"method": "default", "balance": "none", "dedup": "none"}, True),  # coverage's centroid signal
    ({"method": "kd3", "dedup": "semantic"}, True), ({"method": "kd3", "balance": "cluster"}, True),
    ({"method": "kd3"}, False), ({"method": "rad"}, False), ({"method": "random"}, False),
    ({"method": "teacher_confidence"}, False), ({"method": "ddk"}, False), ({"method": "miniplm"}, False),
    ({"method": "kd3", "dedup": "near"}, False), ({"method": "kd3", "balance": "class"}, False),
    ({"method": "critic,kd3"}, True),  # no critic given: the method fails as before, with the column there
])
def test_which_runs_load_embeddings(kw, loads):
    assert _needs(**kw) is loads


def test_a_critic_loads_them_only_when_fitted_on_them(builtin_models, tmp_path):
    teacher, student = builtin_models
    scores, _ = score_table(digits_web().slice(0, 120), teacher, student)
    accept = scores.column("teacher_conf").to_numpy() > 0.9
    paths = {}
    for emb in (True, False):
        X, names = feature_matrix(scores, embedding=emb)
        paths[emb] = str(fit_critic(X, accept, feature_names=names, recall=0.8).save(tmp_path / f"critic-{emb}"))
    assert _needs(method="critic,kd3", critic=paths[True]) is True
    assert _needs(method="critic,kd3", critic=paths[False]) is False
    assert _needs(method="critic,kd3", method_options={"critic": {"path": paths[True]}}) is True
    assert _needs(method="critic,kd3", critic=paths[False], dedup="semantic") is True


def test_every_builtin_method_is_classified():
    """A new built-in method must say whether it reads embeddings: listed in ``NO_EMBEDDING`` or not."""
    assert set(available()) - NO_EMBEDDING == {"coverage", "critic"}
    assert NO_EMBEDDING <= set(available())


def test_methods_listed_as_not_reading_embeddings_select_the_same_without_them(builtin_models):
    teacher, student = builtin_models
    scores, _ = score_table(digits_web().slice(0, 300), teacher, student)
    scores = scores.append_column("domain", pa.array([f"d{i % 3}" for i in range(scores.num_rows)]))
    slim = scores.drop_columns(["embedding"])
    for name in sorted(NO_EMBEDDING):
        a, b = (select(t, methods=[name], budget=90, seed=0, num_classes=10) for t in (scores, slim))
        assert np.array_equal(a.kept, b.kept) and np.array_equal(a.rank, b.rank), name
        assert a.info == b.info and list(a.scores) == list(b.scores), name
        assert all(np.array_equal(a.scores[k], b.scores[k], equal_nan=True) for k in a.scores), name
    a, b = (select(t, methods=["coverage"], budget=90, seed=0, num_classes=10) for t in (scores, slim))
    assert not np.array_equal(a.kept, b.kept)  # coverage does read them: it must get them


def _files(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes()
            for p in sorted(out.rglob("*.parquet"))}


def test_kd3_outputs_are_the_same_with_the_embeddings_loaded(builtin_models, tmp_path):
    prep = prepare(SelectConfig(method="kd3", budget="0.3", dedup="near"), opts=OPTS)
    assert not prep.score_cfg.load_embeddings
    loaded = replace(prep, score_cfg=replace(prep.score_cfg, load_embeddings=True))
    a, b = score(prep, opts=OPTS), score(loaded, opts=OPTS)
    assert "embedding" in b.scores.column_names and "embedding" not in a.scores.column_names
    finish(prep, a, out=str(tmp_path / "slim"))
    finish(loaded, b, out=str(tmp_path / "loaded"))
    slim, full = _files(tmp_path / "slim"), _files(tmp_path / "loaded")
    assert "decisions.parquet" in slim and any(k.startswith("data/") for k in slim)
    assert slim == full  # shards and decisions byte for byte
