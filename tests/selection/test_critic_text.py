"""The text critic: causal-LM statistics + a real (tiny) transformers embedder, a logistic regression, the
cut chosen on validation for a target recall; used by ``critic apply`` and ``--method critic``."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from kdata.core.atomic import write_parquet
from kdata.core.errors import KdataError
from kdata.selection.critic_model import fit_critic, load_critic
from kdata.selection.critic_text import TEXT_STATS, embedder_info, text_feature_matrix
from tests.helpers.text_models import tiny_lm


@pytest.fixture(scope="module")
def embedder(tmp_path_factory) -> str:
    return f"hf:{tiny_lm(tmp_path_factory.mktemp('emb') / 'embedder', seed=9)}"


def scored_rows(n: int = 160, seed: int = 0) -> tuple[pa.Table, np.ndarray]:
    """Text-scoring-like rows; 'accept' (the stand-in for a human label) = the teacher finds the text likely."""
    rng = np.random.default_rng(seed)
    t_nll = rng.normal(3.0, 1.0, n)
    s_nll = t_nll + rng.normal(0.5, 0.3, n)
    good = t_nll + rng.normal(0, 0.4, n) < 3.0
    texts = [("the cat sat on the mat " if g else "xq 0x1f !! ") + str(i) for i, g in enumerate(good)]
    table = pa.table({"sample_id": [f"s{i}" for i in range(n)], "teacher_nll": pa.array(t_nll, pa.float32()),
                      "student_nll": pa.array(s_nll, pa.float32()),
                      "teacher_entropy": pa.array(rng.uniform(1, 3, n), pa.float32()),
                      "kl_ts": pa.array([None] * n, pa.float32()),  # tokenizers differ: null → 0
                      "n_tokens": pa.array(rng.integers(4, 40, n), pa.int32()), "text": texts})
    return table, good


def test_threshold_meets_target_recall_and_accepted_scores_clear_it(embedder, tmp_path):
    table, y = scored_rows()
    X, names = text_feature_matrix(table, embedder=embedder)
    assert names[:len(TEXT_STATS)] == list(TEXT_STATS) and names[len(TEXT_STATS)] == "nll_gap"
    assert X.shape[0] == table.num_rows and any(n.startswith("emb_") for n in names) and np.isfinite(X).all()
    for target in (0.5, 0.8, 0.9):
        crit = fit_critic(X, y, feature_names=names, recall=target)
        acc_val = crit.val_prob >= crit.threshold
        recall = (acc_val & crit.val_label).sum() / crit.val_label.sum()
        assert recall >= target and crit.metrics["threshold_split_recall"] == pytest.approx(recall)
        # the cut is the highest that reaches the target: one step up misses it
        higher = crit.val_prob[crit.val_prob > crit.threshold]
        if len(higher):
            assert ((crit.val_prob >= higher.min()) & crit.val_label).sum() / crit.val_label.sum() < target
    crit.text = {"kind": "text", **embedder_info(embedder)}
    crit.save(tmp_path / "critic")
    back = load_critic(tmp_path / "critic")
    assert back.is_text and back.text["embedder"] == embedder
    p = back.score(table.drop(["text"]), texts=table.column("text").to_pylist())
    assert np.allclose(p, crit.score(X))
    accepted = back.accept(table)  # texts from the table's own column
    assert (p[accepted] >= back.threshold).all() and (p[~accepted] < back.threshold).all()
    assert accepted[y].mean() > accepted[~y].mean()  # it learnt something real


def test_select_method_reads_texts_from_the_pool(embedder, tmp_path):
    from kdata.pools.spec import open_pool
    from kdata.selection.methods import get_method
    from kdata.selection.methods.view import ScoreView

    table, y = scored_rows(seed=1)
    X, names = text_feature_matrix(table, embedder=embedder)
    crit = fit_critic(X, y, feature_names=names, recall=0.8)
    crit.text = {"kind": "text", **embedder_info(embedder)}
    crit.save(tmp_path / "critic")
    write_parquet(tmp_path / "pool" / "part-0.parquet", table.select(["sample_id", "text"]))
    view = ScoreView(table.drop(["text"]), num_classes=0)
    res = get_method("critic").fn(view, budget=None, seed=0, path=str(tmp_path / "critic"),
                                  pool=open_pool(str(tmp_path / "pool")))
    assert np.allclose(res.score, crit.score(X)) and (res.score[res.keep] >= crit.threshold).all()
    assert res.reason == "critic_reject" and res.info["threshold"] == crit.threshold
    with pytest.raises(KdataError, match="give the pool"):
        get_method("critic").fn(view, budget=None, seed=0, path=str(tmp_path / "critic"))


def test_changed_embedder_or_missing_stats_are_one_line(embedder, tmp_path):
    table, _ = scored_rows(seed=2)
    with pytest.raises(KdataError, match="weights changed"):
        text_feature_matrix(table, embedder=embedder, embedder_checksum="sha256:0000")
    with pytest.raises(KdataError, match="lack column"):
        text_feature_matrix(table.drop(["student_nll"]))
    X, _ = text_feature_matrix(table)  # statistics only
    assert X.shape[1] == len(TEXT_STATS) + 1
