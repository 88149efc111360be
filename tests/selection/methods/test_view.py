"""kd3 / rad / coverage / baselines on causal-LM sequence statistics (issue #19): the view's derived
columns by hand, each method's behaviour on a small table, and the methods through ``kdata select``
on a tiny text pool with tiny transformers LMs."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from kdata.core.errors import KdataError
from kdata.selection.methods.view import ScoreView, is_sequence_level
from kdata.selection.run import select


def lm_table(t_nll, s_nll, h_t, kl=None, domain=None) -> pa.Table:
    n = len(t_nll)
    cols = {"sample_id": pa.array([f"x{i}" for i in range(n)]), "label_idx": pa.array([-1] * n, pa.int32()),
            "teacher_nll": pa.array(t_nll, pa.float32()), "student_nll": pa.array(s_nll, pa.float32()),
            "teacher_entropy": pa.array(h_t, pa.float32()),
            "kl_ts": pa.array(kl if kl is not None else [None] * n, pa.float32())}
    if domain is not None:
        cols["domain"] = pa.array(domain)
    return pa.table(cols)


def test_derived_columns_by_hand():
    t = lm_table([1.0, 2.0, 0.5], [2.0, 2.0, float("nan")], [0.5, 3.0, 0.4], kl=[0.3, None, None])
    assert is_sequence_level(t)
    v = ScoreView(t, num_classes=260)
    assert v.sequence_level and v.has("teacher_conf") and v.has("student_margin") and not v.has("teacher_pred")
    np.testing.assert_allclose(v.col("teacher_conf"), np.exp([-1.0, -2.0, -0.5]), rtol=1e-6)
    np.testing.assert_allclose(v.col("student_conf"), np.exp([-2.0, -2.0, -0.5]), rtol=1e-6)  # NaN → teacher's
    np.testing.assert_allclose(v.col("student_margin"), [0.25, 1.0, 0.8], rtol=1e-6)  # clip(H_T / s_nll)
    np.testing.assert_allclose(v.col("kl_ts"), [0.3, 0.0, 0.0], atol=1e-7)  # KL where shared, else |Δnll|
    np.testing.assert_allclose(v.col("student_entropy"), [2.0, 2.0, 0.5], rtol=1e-6)


def test_image_tables_are_read_as_they_are():
    t = pa.table({"sample_id": ["a"], "teacher_conf": pa.array([0.9], pa.float32()),
                  "teacher_topk_prob": pa.array([[0.9]], pa.list_(pa.float32()))})
    v = ScoreView(t, num_classes=2)
    assert not v.sequence_level and not v.has("student_margin")
    with pytest.raises(KdataError, match=r"^scores table: no column 'student_margin'"):  # one line, not a bare KeyError
        v.col("student_margin")


def _kept(t, sel):
    return sorted(np.asarray(t.column("sample_id").to_pylist())[sel.kept].tolist())


def test_kd3_keeps_text_both_models_find_predictable():
    # x0: both sure; x1: only the teacher; x2: neither (junk); x3: both fairly sure
    t = lm_table([0.2, 0.2, 5.0, 0.5], [0.3, 4.0, 5.0, 0.6], [0.2, 0.2, 4.0, 0.4])
    sel = select(t, methods=["kd3"], budget=2, seed=0, num_classes=260)
    assert _kept(t, sel) == ["x0", "x3"]
    np.testing.assert_allclose(sel.scores["score_kd3"][0], 0.5 * np.exp(-0.2) + 0.5 * np.exp(-0.3), rtol=1e-6)


def test_baselines_and_rad_on_sequence_statistics():
    # x0: clean, student already good; x1: clean, student lost (informative); x2: junk; x3: clean, half-learnt
    t = lm_table([0.4, 0.5, 6.0, 0.6], [0.6, 3.0, 6.5, 1.5], [0.4, 0.5, 5.5, 0.5], kl=[0.05, 1.2, 0.9, 0.5])
    assert _kept(t, select(t, methods=["teacher_confidence"], budget=1, seed=0, num_classes=260)) == ["x0"]
    assert _kept(t, select(t, methods=["student_entropy"], budget=1, seed=0, num_classes=260)) == ["x2"]
    assert _kept(t, select(t, methods=["disagreement"], budget=1, seed=0, num_classes=260)) == ["x1"]
    sel = select(t, methods=["rad"], budget=2, seed=0, num_classes=260)
    # the gain (student uncertainty × teacher confidence) is highest on x1, then x3; junk x2 gets ~0
    info = sel.info["rad"]
    assert info["gain"] == "student_margin_x_teacher_conf" and not sel.kept[2]
    assert sel.kept[1]
    # exp(−NLL) is a token probability, not a sequence error rate: RAD plans for a fixed mistake share
    assert info["teacher_error_from"] == "fixed_for_sequences" and info["teacher_error"] == pytest.approx(0.1)


def test_coverage_stratifies_lm_text_by_domain():
    rng = np.random.default_rng(0)
    n = 120
    dom = np.array(["code", "prose", "docs"])[np.arange(n) % 3]
    t_nll = rng.uniform(0.5, 2.0, n)
    t_nll[dom == "code"] -= 0.4  # code is easy for the teacher: a ranking would take mostly code
    t = lm_table(t_nll, t_nll + rng.uniform(0, 1, n), t_nll * 0.8, kl=rng.uniform(0, 1, n))
    doms = pa.table({"sample_id": t.column("sample_id"), "domain": pa.array(dom.tolist())})
    sel = select(t, methods=["coverage"], budget=30, seed=0, num_classes=260, options={"coverage": {"domains": doms}})
    kept = dom[sel.kept]
    assert sel.kept.sum() == 30 and set(kept) == {"code", "prose", "docs"}
    assert min(np.bincount(np.unique(kept, return_inverse=True)[1])) >= 8  # each domain covered
    info = sel.info["coverage"]
    assert info["strata"] == "domain x difficulty" and info["classes"] == 3
    assert info["tail_signals"] == ["teacher_low_confidence", "kl_ts"]


@pytest.mark.parametrize("method", ["kd3", "rad", "coverage", "teacher_confidence"])
def test_class_methods_run_on_causal_lm_text(method, tmp_path):
    pytest.importorskip("transformers")
    from kdata.pipeline.config import RunOptions, SelectConfig
    from kdata.pipeline.run import run_select
    from tests.helpers.text_models import text_assets

    d = text_assets()
    cfg = SelectConfig(pool=str(d / "pool.jsonl"), teacher=f"hf:{d / 't'}", student=f"hf:{d / 's'}",
                       method=method, budget="0.3")
    report = run_select(cfg, out=str(tmp_path / method), opts=RunOptions(device="cpu", num_workers=0))
    c = report.counts
    assert c["n_in"] == 62 and c["kept"] == 18 and c["n_in"] == c["kept"] + c["rejected"] + c["quarantined"]
    if method == "coverage":
        assert report.info["method_info"]["coverage"]["strata"] == "domain x difficulty"


def test_ddk_follows_the_papers_smoothed_update():
    """DDK (arXiv 2407.16154) Eq. 2: r = α·ψ/Σψ + (1 − α)/N, ψ = r_prev·exp(ℓ_S/ℓ_T); Eq. 1 from uniform r_prev."""
    from kdata.selection.methods.ddk import domain_proportions

    e = np.e
    np.testing.assert_allclose(domain_proportions(np.array([2.0, 1.0])),
                               [0.5 * e / (e + 1) + 0.25, 0.5 / (e + 1) + 0.25])  # softmax of Eq. 1, smoothed
    psi = np.array([0.2 * e ** 2, 0.8 * e])
    np.testing.assert_allclose(domain_proportions(np.array([2.0, 1.0]), previous=np.array([0.2, 0.8])),
                               0.5 * psi / psi.sum() + 0.25)
    r = domain_proportions(np.array([50.0, 0.0, 0.0]), alpha=0.5)
    assert r.min() >= 0.5 / 3 - 1e-12 and abs(r.sum() - 1) < 1e-12  # the (1 − α)/N floor; no overflow


def test_ddk_on_lm_text_uses_the_perplexity_ratio():
    # domain a: student 1 nat worse than the teacher (ppl ratio e); domain b: no gap (ratio 1)
    t = lm_table([1.0] * 8, [2.0] * 4 + [1.0] * 4, [1.0] * 8, domain=["a"] * 4 + ["b"] * 4)
    sel = select(t, methods=["ddk"], budget=4, seed=0, num_classes=260)
    d = sel.info["ddk"]["domains"]
    np.testing.assert_allclose([d["a"]["perplexity_ratio"], d["b"]["perplexity_ratio"]], [np.e, 1.0], rtol=1e-6)
    want = 0.5 * np.exp(np.e) / (np.exp(np.e) + np.e) + 0.25
    np.testing.assert_allclose(d["a"]["proportion"], want, rtol=1e-6)
    assert d["a"]["quota"] == 3 and d["b"]["quota"] == 1
