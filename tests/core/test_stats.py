"""kdata.core.stats: the three backends (eager, compiled, native) against a float64 reference."""

from __future__ import annotations

import warnings

import numpy as np
import pyarrow as pa
import pytest
import torch

import kdata.core.stats as S
from kdata.core import native
from kdata.core.errors import KdataError
from kdata.core.stats import chunk_rows, disagreement, logit_stats, recorded_temperature, with_temperature


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


NEEDS_NATIVE = pytest.mark.skipif(not native.available(), reason="needs a C compiler: " + native.status())
NEEDS_AVX2 = pytest.mark.skipif(not native.available("avx2"), reason="needs AVX2: " + native.status("avx2"))
# "native-avx2": the AVX2 build of the same kernel, run on this machine even if it has AVX-512
ALL = ["eager", "compiled", pytest.param("native", marks=NEEDS_NATIVE),
       pytest.param("native-avx2", marks=NEEDS_AVX2)]


def nat(*args, isa=""):
    return pytest.param("native" + isa, *args, marks=NEEDS_AVX2 if isa else NEEDS_NATIVE)


@pytest.fixture()
def use(monkeypatch):
    """The backend name for kdata.core.stats; "native-avx2" selects the AVX2 build first."""
    def pick(backend: str) -> str:
        if backend == "native-avx2":
            monkeypatch.setenv("KDATA_NATIVE_ISA", "avx2")
            return "native"
        return backend
    return pick


# few class counts for "compiled": it compiles once per class count (≈ 4 s each)
@pytest.mark.parametrize("backend,n,c,temperature", [
    ("eager", 3000, 1000, 1.0), ("eager", 300, 17, 2.0), ("eager", 40, 2, 1.0),
    ("compiled", chunk_rows(17) + 5, 17, 1.0), ("compiled", 300, 17, 2.0), ("compiled", 40, 6, 1.0),
    # native: threaded (≥ 2²⁰ elements), vector tails (C mod 16), C < 16, wide rows
    nat(3000, 1000, 1.0), nat(300, 17, 2.0), nat(40, 2, 1.0), nat(500, 33, 0.5), nat(200, 16, 1.0),
    nat(20, 20_000, 1.0),
    nat(3000, 1000, 1.0, isa="-avx2"), nat(300, 17, 2.0, isa="-avx2"), nat(40, 3, 1.0, isa="-avx2"),
    nat(500, 33, 0.5, isa="-avx2"), nat(200, 8, 1.0, isa="-avx2")])
def test_statistics_match_float64_reference(use, backend, n, c, temperature):
    t, s = logits(n, c)
    got = logit_stats(t, s, temperature=temperature, backend=use(backend), chunk=3000)
    assert not S._COMPILE_FAILED, S._COMPILE_FAILED  # the compiled path really ran
    assert_matches(got, reference(t, s, temperature))


@pytest.mark.parametrize("backend", ALL)
def test_ties_one_class_and_wide_ranges(use, backend):
    backend = use(backend)
    t, s = logits(8, 6, seed=1)
    t[0, [1, 4]] = t[0].max() + 2.0  # two maxima: first index, margin 0
    s[1, [0, 2, 5]] = s[1].max() + 1.0  # three maxima
    t[2, 3], s[2, 0] = -500.0, -5e3  # far below the maximum: exp underflows, KL stays exact
    got = logit_stats(t, s, backend=backend)
    assert got["teacher_pred"][0] == 1 and got["teacher_margin"][0] == pytest.approx(0.0, abs=1e-6)
    assert got["student_pred"][1] == 0 and got["student_margin"][1] == pytest.approx(0.0, abs=1e-6)
    assert_matches(got, reference(t, s))
    one = logit_stats(t[:, :1], s[:, :1], backend=backend)
    np.testing.assert_allclose(one["teacher_margin"], 1.0)
    np.testing.assert_allclose(one["kl_ts"], 0.0, atol=1e-7)
    assert (one["teacher_pred"] == 0).all()


@pytest.mark.parametrize("backend", ALL)
def test_masked_classes_and_nan_rows(use, backend):
    """−inf logits (masked classes) give the statistics of the unmasked classes; a NaN logit makes
    its own row's statistics NaN and leaves the other rows alone."""
    backend = use(backend)
    t, s = logits(6, 40, seed=4)
    mask = np.zeros(40, bool)
    mask[[0, 7, 31, 39]] = True
    tm, sm = t.copy(), s.copy()
    tm[:, mask] = sm[:, mask] = -np.inf
    got = logit_stats(tm, sm, backend=backend)
    want = reference(t[:, ~mask], s[:, ~mask])
    keep = np.flatnonzero(~mask)
    want["teacher_pred"], want["student_pred"] = keep[want["teacher_pred"]], keep[want["student_pred"]]
    assert_matches(got, want)
    tm[3, 5] = np.nan
    got = logit_stats(tm, sm, backend=backend)
    for k in ("teacher_entropy", "kl_ts", "kl_st", "teacher_conf"):
        assert np.isnan(got[k][3]) and np.isfinite(np.delete(got[k], 3)).all(), k


def test_backends_agree_and_are_deterministic(monkeypatch):
    t, s = logits(2 * chunk_rows(17) + 17, 17, seed=2)
    backends = ["compiled", "eager"] + (["native"] if native.available() else [])
    runs = {b: logit_stats(t, s, backend=b) for b in backends}
    again = {b: logit_stats(t, s, backend=b) for b in ("compiled", "native") if b in runs}
    for b, r in again.items():
        for k in r:
            np.testing.assert_array_equal(r[k], runs[b][k], err_msg=f"{b} {k}")
    if native.available("avx2"):
        monkeypatch.setenv("KDATA_NATIVE_ISA", "avx2")
        runs["native-avx2"] = logit_stats(t, s, backend="native")
        backends.append("native-avx2")
    for b in backends[1:]:
        for k in runs[b]:
            np.testing.assert_allclose(runs[b][k], runs["compiled"][k], atol=5e-6, rtol=1e-5, err_msg=f"{b} {k}")


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("topk", [3, 20])  # native collects k ≤ 16 itself; torch.topk above that
def test_disagreement_soft_labels(use, backend, topk):
    backend = use(backend)
    t, s = logits(50, 40, seed=3)
    labels = torch.tensor([i % 40 if i % 5 else -1 for i in range(50)])
    out = disagreement(torch.from_numpy(t), torch.from_numpy(s), temperature=2.0, topk=topk,
                       label_idx=labels, backend=backend)
    pt = np.exp(t / 2.0 - np.logaddexp.reduce(t.astype(np.float64) / 2.0, axis=1, keepdims=True))
    idx = np.argsort(-t, 1, kind="stable")[:, :topk]
    np.testing.assert_array_equal(out["teacher_topk_idx"].numpy(), idx)
    np.testing.assert_allclose(out["teacher_topk_prob"].numpy(), np.take_along_axis(pt, idx, 1), atol=1e-6)
    np.testing.assert_allclose(out["teacher_topk_logit"].numpy(), np.take_along_axis(t, idx, 1))
    np.testing.assert_array_equal(out["student_topk_idx"].numpy(), np.argsort(-s, 1, kind="stable")[:, :topk])
    lab = labels.numpy()
    want = np.where(lab >= 0, pt[np.arange(50), np.clip(lab, 0, None)], np.nan)
    np.testing.assert_allclose(out["teacher_label_prob"].numpy(), want, atol=1e-6)
    assert (out["agree"].numpy() == (t.argmax(1) == s.argmax(1))).all()
    assert_matches({k: v.numpy() for k, v in out.items()}, reference(t, s, 2.0))


@pytest.mark.parametrize("backend", ALL[2:])
def test_native_top_k_with_many_equal_values(use, backend):
    """Rows where most values tie overflow the kernel's candidate buffer (64): the top-k is still
    the stable order (lowest index first among equals), as a stable argsort gives."""
    use(backend)
    rng = np.random.default_rng(5)
    t = np.zeros((4, 1000), np.float32)
    t[1, rng.choice(1000, 300, replace=False)] = 2.0  # 300 tied maxima
    t[2] = np.repeat(np.arange(10, dtype=np.float32), 100)  # ascending blocks of ties
    t[3] = rng.integers(0, 3, 1000).astype(np.float32)
    s = t[::-1].copy()
    out = disagreement(torch.from_numpy(t), torch.from_numpy(s), topk=16, backend="native")
    for z, key in ((t, "teacher_topk_idx"), (s, "student_topk_idx")):
        np.testing.assert_array_equal(out[key].numpy(), np.argsort(-z, 1, kind="stable")[:, :16])
    np.testing.assert_array_equal(out["teacher_pred"].numpy(), t.argmax(1))
    np.testing.assert_allclose(out["teacher_margin"].numpy(), 0.0, atol=1e-7)


def test_backend_choice(monkeypatch):
    assert S.choose_backend("cpu", 10, 10, "eager") == "eager"
    assert S.choose_backend("meta", 10, 10**12) == "eager"  # not a CPU: eager (the GPU path)
    with pytest.raises(ValueError, match="expected one of"):
        S.choose_backend("cpu", 10, 10, "fast")
    if native.available():
        assert S.choose_backend("cpu", 10, 10) == "native"
    monkeypatch.setenv("KDATA_NATIVE", "0")
    assert "KDATA_NATIVE=0" in native.status()
    assert S.choose_backend("cpu", 10, 10) == "eager"
    assert S.choose_backend("cpu", 1000, 10**9) == "compiled"
    with pytest.raises(RuntimeError, match="native statistics: off"):
        S.choose_backend("cpu", 10, 10, "native")
    monkeypatch.setenv("KDATA_STATS_BACKEND", "compiled")
    assert S.choose_backend("cpu", 10, 10) == "compiled"


def test_shape_mismatch_is_a_clear_error():
    t, s = logits(4, 5)
    with pytest.raises(KdataError, match=r"^logit_stats: teacher logits \(4, 5\) vs student \(4, 4\)$"):
        logit_stats(t, s[:, :4])
    with pytest.raises(KdataError, match=r"^disagreement: teacher logits \(4, 5\) vs student \(4, 4\)$"):
        disagreement(torch.from_numpy(t), torch.from_numpy(s[:, :4]))


def test_disagreement_names_what_it_takes_when_given_numpy():
    """disagreement(numpy, numpy) failed with AttributeError: 'numpy.ndarray' object has no attribute 'float'."""
    t, s = logits(4, 5)
    with pytest.raises(KdataError, match=r"^disagreement: teacher_logits is a numpy.ndarray, expected a "
                                         r"torch.Tensor .*logit_stats, or torch.from_numpy\)$"):
        disagreement(t, s)
    got = disagreement(torch.from_numpy(t), torch.from_numpy(s))
    np.testing.assert_allclose(got["kl_ts"].numpy(), logit_stats(t, s)["kl_ts"], rtol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_read_only_arrow_logits_give_no_warning_and_the_same_statistics(dtype):
    """Read-only numpy over an Arrow buffer (a table of one's own) made torch warn "The given NumPy array
    is not writable"; the read-only chunk is now copied, and the statistics are those of a writable copy."""
    t, s = logits(500, 10, seed=3)
    tbl = pa.table({"t": pa.FixedSizeListArray.from_arrays(pa.array(t.astype(dtype).ravel()), 10),
                    "s": pa.FixedSizeListArray.from_arrays(pa.array(s.astype(dtype).ravel()), 10)})
    rt, rs = (tbl.column(n).combine_chunks().flatten().to_numpy().reshape(500, 10) for n in ("t", "s"))
    assert not rt.flags.writeable and not rs.flags.writeable
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = logit_stats(rt, rs, chunk=128)
    want = logit_stats(rt.copy(), rs.copy(), chunk=128)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])
    assert not rt.flags.writeable  # the caller's array is left as it was


def test_temperature_is_recorded_in_the_schema_metadata_and_read_back():
    tbl = pa.table({"x": [1]}).replace_schema_metadata({"kdata": "{}"})
    assert recorded_temperature(tbl) is None
    stamped = with_temperature(tbl, 4)
    assert recorded_temperature(stamped) == 4.0 and stamped.schema.metadata[b"kdata"] == b"{}"
    assert recorded_temperature(with_temperature(stamped, 0.1)) == 0.1
