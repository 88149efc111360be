"""kdata.stats: both paths (eager and the compiled kernel) against a float64 reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import kdata.stats as S
from kdata.stats import chunk_rows, disagreement, logit_stats


def reference(t: np.ndarray, s: np.ndarray, temperature: float = 1.0) -> dict[str, np.ndarray]:
    """The textbook definitions in float64: log-softmax, KL, entropy, top-2 margin, argmax."""
    def log_softmax(z):
        z = z.astype(np.float64) / temperature
        z = z - z.max(1, keepdims=True)
        return z - np.log(np.exp(z).sum(1, keepdims=True))

    lt, ls = log_softmax(t), log_softmax(s)
    pt, ps = np.exp(lt), np.exp(ls)
    st, ss = np.sort(pt, 1), np.sort(ps, 1)
    second = (lambda p: p[:, -2]) if t.shape[1] > 1 else (lambda p: np.zeros(len(p)))
    return {
        "teacher_pred": t.argmax(1), "student_pred": s.argmax(1),
        "teacher_conf": st[:, -1], "student_conf": ss[:, -1],
        "teacher_margin": st[:, -1] - second(st), "student_margin": ss[:, -1] - second(ss),
        "teacher_entropy": -(pt * lt).sum(1), "student_entropy": -(ps * ls).sum(1),
        "kl_ts": (pt * (lt - ls)).sum(1), "kl_st": (ps * (ls - lt)).sum(1),
    }


def logits(n: int, c: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    t = (rng.standard_normal((n, c)) * 3).astype(np.float32)
    return t, (t + rng.standard_normal((n, c)) * 1.5).astype(np.float32)


def assert_matches(got: dict, ref: dict, atol: float = 5e-6):
    for k, v in ref.items():
        if k.endswith("pred"):
            np.testing.assert_array_equal(got[k], v, err_msg=k)
        else:
            np.testing.assert_allclose(got[k], v, atol=atol, rtol=1e-5, err_msg=k)


def test_exp_polynomial_relative_error():
    x = torch.linspace(-87.0, 0.0, 400_001)
    got = S._exp_neg(x).double()
    want = torch.exp(x.double())
    assert float(((got - want).abs() / want).max()) < 3e-7
    assert float(S._exp_neg(torch.tensor([-1e4, float("-inf")])).max()) < 1e-37  # clamped, finite


# few class counts: the kernel compiles once per class count (≈ 4 s each)
@pytest.mark.parametrize("compile,n,c,temperature", [
    (False, 3000, 1000, 1.0), (False, 300, 17, 2.0), (False, 40, 2, 1.0),
    (True, chunk_rows(17) + 5, 17, 1.0), (True, 300, 17, 2.0), (True, 40, 6, 1.0)])
def test_statistics_match_float64_reference(compile, n, c, temperature):
    t, s = logits(n, c)
    got = logit_stats(t, s, temperature=temperature, compile=compile, chunk=3000)
    assert not S._COMPILE_FAILED, S._COMPILE_FAILED  # the compiled path really ran
    assert_matches(got, reference(t, s, temperature))


@pytest.mark.parametrize("compile", [False, True])
def test_ties_one_class_and_wide_ranges(compile):
    t, s = logits(8, 6, seed=1)
    t[0, [1, 4]] = t[0].max() + 2.0  # two maxima: first index, margin 0
    s[1, [0, 2, 5]] = s[1].max() + 1.0  # three maxima
    t[2, 3], s[2, 0] = -500.0, -1e4  # far below the maximum: exp underflows, stays finite
    got = logit_stats(t, s, compile=compile)
    assert got["teacher_pred"][0] == 1 and got["teacher_margin"][0] == pytest.approx(0.0, abs=1e-6)
    assert got["student_pred"][1] == 0 and got["student_margin"][1] == pytest.approx(0.0, abs=1e-6)
    assert_matches(got, reference(t, s))
    one = logit_stats(t[:, :1], s[:, :1], compile=compile)
    np.testing.assert_allclose(one["teacher_margin"], 1.0)
    np.testing.assert_allclose(one["kl_ts"], 0.0, atol=1e-7)
    assert (one["teacher_pred"] == 0).all()


def test_compiled_and_eager_agree_and_compiled_is_deterministic():
    t, s = logits(2 * chunk_rows(17) + 17, 17, seed=2)
    a = logit_stats(t, s, compile=True)
    b = logit_stats(t, s, compile=True)
    e = logit_stats(t, s, compile=False)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
        np.testing.assert_allclose(a[k], e[k], atol=5e-6, rtol=1e-5, err_msg=k)


@pytest.mark.parametrize("compile", [False, True])
def test_disagreement_soft_labels(compile):
    t, s = logits(50, 17, seed=3)
    labels = torch.tensor([i % 17 if i % 5 else -1 for i in range(50)])
    out = disagreement(torch.from_numpy(t), torch.from_numpy(s), temperature=2.0, topk=3,
                       label_idx=labels, compile=compile)
    pt = np.exp(t / 2.0 - np.logaddexp.reduce(t.astype(np.float64) / 2.0, axis=1, keepdims=True))
    idx = np.argsort(-t, 1)[:, :3]
    np.testing.assert_array_equal(out["teacher_topk_idx"].numpy(), idx)
    np.testing.assert_allclose(out["teacher_topk_prob"].numpy(), np.take_along_axis(pt, idx, 1), atol=1e-6)
    np.testing.assert_allclose(out["teacher_topk_logit"].numpy(), np.take_along_axis(t, idx, 1))
    lab = labels.numpy()
    want = np.where(lab >= 0, pt[np.arange(50), np.clip(lab, 0, None)], np.nan)
    np.testing.assert_allclose(out["teacher_label_prob"].numpy(), want, atol=1e-6)
    assert (out["agree"].numpy() == (t.argmax(1) == s.argmax(1))).all()
    assert_matches({k: v.numpy() for k, v in out.items()}, reference(t, s, 2.0))


def test_shape_mismatch_is_a_clear_error():
    t, s = logits(4, 5)
    with pytest.raises(ValueError, match="teacher logits"):
        logit_stats(t, s[:, :4])
