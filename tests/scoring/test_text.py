"""Text scoring: length buckets restore order, per-row values equal unbatched forwards, the per-token
contract, kl_ts only with a shared tokenizer, classifier statistics as for images, caching."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

pytest.importorskip("transformers")

from kdata.core.errors import KdataError  # noqa: E402
from kdata.core.stats import disagreement  # noqa: E402
from kdata.models.hf import load_hf  # noqa: E402
from kdata.pools.spec import open_pool  # noqa: E402
from kdata.pools.text import text_table  # noqa: E402
from kdata.scoring.text import TextScoreConfig, score_text_pool, score_text_table, text_models  # noqa: E402
from kdata.scoring.text_batches import length_batches  # noqa: E402
from tests.helpers.text_models import text_assets  # noqa: E402


@pytest.fixture(scope="module")
def lms():
    d = text_assets()
    return tuple(load_hf(d / x) for x in "tsr")


def _table(texts):
    return text_table([f"x{i}" for i in range(len(texts))], texts, errors=[None] * len(texts), source="t")


def test_length_batches_cover_rows_once_under_the_budget():
    lengths = np.array([5, 1, 9, 3, 3, 7, 2, 8, 30])
    batches = length_batches(lengths, batch_size=3, tokens=16)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(len(lengths)))
    assert np.all(np.diff(lengths[flat]) >= 0)  # ascending length
    for b in batches:
        assert len(b) <= 3 and (len(b) * lengths[b].max() <= 16 or len(b) == 1)


def _alone(model, text):
    ids = torch.tensor([model.tokenizer(text)["input_ids"]])
    with torch.inference_mode():
        logp = torch.log_softmax(model.model(input_ids=ids).logits[0, :-1].float(), -1)
    return ids[0], logp


def test_causal_lm_rows_match_single_text_forwards(lms):
    t, s, r = lms
    texts = ["short one", "a much longer text that spans many more byte tokens than the others", "mid length x",
             "z" * 40]
    scores, quarantined = score_text_table(_table(texts), text_models(t, s, r),
                                           config=TextScoreConfig(tokens_per_batch=64, token_topk=4))
    assert quarantined == [] and scores.column("sample_id").to_pylist() == ["x0", "x1", "x2", "x3"]
    rows = scores.to_pylist()
    for text, row in zip(texts, rows):
        ids, logp_t = _alone(t, text)
        _, logp_s = _alone(s, text)
        nll = -logp_t.gather(1, ids[1:, None]).squeeze(1)
        assert row["input_ids"] == ids.tolist() and row["n_tokens"] == len(ids)
        assert row["teacher_nll"] == pytest.approx(nll.mean().item(), abs=1e-4)
        assert row["teacher_nll_sum"] == pytest.approx(nll.sum().item(), rel=1e-4)
        kl = (logp_t.exp() * (logp_t - logp_s)).sum(-1).mean().item()
        assert row["kl_ts"] == pytest.approx(kl, abs=1e-4)
        assert len(row["teacher_topk_ids"]) == len(ids) - 1 == len(row["teacher_rest_mass"])
        top = logp_t.topk(4, -1)
        assert row["teacher_topk_ids"] == top.indices.tolist()
        np.testing.assert_allclose(row["teacher_topk_logprobs"], top.values.numpy(), atol=2e-2)
        rest = np.clip(1 - np.exp(np.asarray(row["teacher_topk_logprobs"], dtype=np.float64)).sum(1), 0, None)
        np.testing.assert_allclose(row["teacher_rest_mass"], rest, atol=2e-3)
        ref_ids = torch.tensor(r.tokenizer(text)["input_ids"])
        with torch.inference_mode():
            lr = torch.log_softmax(r.model(input_ids=ref_ids[None]).logits[0, :-1].float(), -1)
        assert row["reference_nll"] == pytest.approx(-lr.gather(1, ref_ids[1:, None]).mean().item(), abs=1e-4)


def test_kl_is_null_when_tokenizers_differ(lms):
    t, _, r = lms
    scores, _ = score_text_table(_table(["some text", "other text"]), text_models(t, r))
    assert scores.column("kl_ts").null_count == 2
    assert scores.column("student_nll").null_count == 0


def test_quarantine_reasons_and_too_short(lms):
    t, s, _ = lms
    table = text_table(["a", "b", "c", "d"], ["fine text", "", "q", "y" * 30],
                       errors=[None, None, None, "undecodable_text: line 4 is not JSON"], source="t")
    scores, quarantined = score_text_table(table, text_models(t, s), config=TextScoreConfig(max_text_chars=20))
    assert scores.column("sample_id").to_pylist() == ["a"]
    why = dict(quarantined)
    assert why["b"] == "empty_text" and why["c"].startswith("too_short") and why["d"].startswith("undecodable")


def test_image_table_is_refused_for_text_models(lms):
    t, s, _ = lms
    table = pa.table({"sample_id": ["i"], "image": [b"\x89PNG"], "text": pa.nulls(1, pa.string())})
    with pytest.raises(KdataError, match="images, not text"):
        score_text_table(table, text_models(t, s))


def test_classifier_statistics_equal_the_image_path():
    d = text_assets()
    c1, c2 = load_hf(d / "c1"), load_hf(d / "c2")
    texts = ["good stuff", "bad", "neutral-ish sentence here"]
    table = _table(texts).set_column(3, "label", pa.array(["pos", "neg", None]))
    scores, _ = score_text_table(table, text_models(c1, c2), config=TextScoreConfig(topk=2))
    assert scores.column("label_idx").to_pylist() == [1, 0, -1]
    for i, text in enumerate(texts):
        with torch.inference_mode():
            zt = c1.model(input_ids=torch.tensor([c1.tokenizer(text)["input_ids"]])).logits.float()
            zs = c2.model(input_ids=torch.tensor([c2.tokenizer(text)["input_ids"]])).logits.float()
        ref = disagreement(zt, zs, topk=2, label_idx=torch.tensor([[1, 0, -1][i]], dtype=torch.int32))
        assert scores.column("kl_ts")[i].as_py() == pytest.approx(ref["kl_ts"].item(), abs=1e-5)
        assert scores.column("teacher_pred")[i].as_py() == ref["teacher_pred"].item()


def test_units_are_cached_and_keys_follow_the_options(lms, tmp_path, monkeypatch):
    monkeypatch.setenv("KDATA_CACHE", str(tmp_path / "cache"))  # a fresh score cache
    t, s, _ = lms
    pool = open_pool(str(text_assets() / "pool.jsonl"))
    m = text_models(t, s)
    first, q1, info1 = score_text_pool(pool, m, config=TextScoreConfig(token_topk=3), cache=True)
    again, q2, info2 = score_text_pool(pool, m, config=TextScoreConfig(token_topk=3), cache=True)
    assert info1["cache_hits"] == 0 and info2["cache_hits"] == 1 and again.equals(first) and q1 == q2
    assert info1["n_in"] == first.num_rows + len(q1) == 62
    other, _, info3 = score_text_pool(pool, m, config=TextScoreConfig(token_topk=2), cache=True)
    assert info3["cache_hits"] == 0 and len(other.column("teacher_topk_ids")[0].as_py()[0]) == 2


@pytest.mark.usefixtures("warning_lines")  # the warning read from stderr, as the CLI prints it
@pytest.mark.parametrize("damage", ["truncated", "bad_json", "no_sample_id"])
def test_a_damaged_text_cache_entry_is_scored_again_with_a_warning(lms, tmp_path, monkeypatch, capsys, damage):
    """A text unit's cache entry is checked like an image unit's (kdata.scoring.cache_entries): damaged,
    it is dropped, scored again and rewritten, with one warning line naming the file."""
    import os

    import pyarrow.parquet as pq

    monkeypatch.setenv("KDATA_CACHE", str(tmp_path / "cache"))
    t, s, _ = lms
    pool = open_pool(str(text_assets() / "pool.jsonl"))
    m = text_models(t, s)
    first, q1, _ = score_text_pool(pool, m, cache=True)
    [path] = (tmp_path / "cache" / "scores").glob("text-*.parquet")
    qpath = path.with_name(path.name.replace(".parquet", ".quarantine.json"))
    if damage == "truncated":
        os.truncate(path, path.stat().st_size // 2)
    elif damage == "bad_json":
        qpath.write_text('{"n_in": 62, "quarantined": [')
    else:
        pq.write_table(pq.read_table(path).drop_columns(["sample_id"]), path)
    capsys.readouterr()
    again, q2, info = score_text_pool(pool, m, cache=True)
    err = capsys.readouterr().err.strip().splitlines()
    assert info["cache_hits"] == 0 and again.equals(first) and q1 == q2
    named = qpath if damage == "bad_json" else path
    assert len(err) == 1 and err[0].startswith(f"kdata: warning: score cache entry {named}: ")
    _, _, info = score_text_pool(pool, m, cache=True)
    assert info["cache_hits"] == 1 and capsys.readouterr().err == ""
