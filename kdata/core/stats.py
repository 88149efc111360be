"""Teacher–student disagreement statistics over logits, on whatever device the logits live.

Everything per row comes from one pass of plain reductions over the shifted logits
z' = z/T − max(z/T), with e = exp(z') and S = Σ e:

    log p = z' − log S                     H(p) = log S − Σ e z' / S
    KL(t‖s) = Σ e_t (z'_t − z'_s) / S_t − log S_t + log S_s      (and KL(s‖t) alike)
    conf = 1 / S      margin = (1 − exp(z'_(2))) / S      pred = first index with z' = 0

z' is floored at ``D_FLOOR`` = −10⁴: exact for any finite gap up to that, while −inf logits (masked
classes, or −3.4e38 as some frameworks mask) add nothing to S instead of making the row NaN.

On a CPU these statistics are bound by ``exp``, not memory: eager torch makes every op a pass
over N × C (≈ 2% of a plain ``sum``'s bandwidth, even in cache-sized blocks). Three backends
(``choose_backend``), all agreeing with a float64 reference to 5e-6 (``tests/test_stats.py``) and
measured by ``benchmarks/select_speed.py``:

* ``native`` — ``kdata.core.native``: a hand-written AVX-512 / AVX2 kernel, built on first use with the
  system C compiler; it also collects the top-k soft labels in the same pass. The default on CPUs
  where it builds.
* ``compiled`` — ``_row_stats`` ``torch.compile``d into one loop nest per row (the row maxima, then
  one vectorised pass) with ``exp`` by Cody–Waite range reduction and a degree-5 polynomial
  (relative error ≤ 3e-7; Muller, *Elementary Functions*, ch. 11); rows go in fixed-size chunks
  (the last one padded) so the kernel compiles once per class count. The default on other CPUs
  once the work (rows × classes ≥ ``COMPILE_MIN``) repays the compile.
* ``eager`` — ``_row_stats_eager``: library log-softmax and top-2, in 1 MB blocks on a CPU; GPUs
  and small work elsewhere.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from kdata.core import native
from kdata.core.errors import KdataError
from kdata.core.warn import warn

COMPILE_MIN = int(os.environ.get("KDATA_COMPILE_MIN", 500_000_000))  # ≈ compile time × eager speed
CHUNK_ELEMS = 1 << 24  # rows × classes per compiled call (64 MB per side): amortises the call and the
#                       threads' barrier; the shape is fixed per class count, so one compile each
EAGER_BLOCK = 1 << 18  # elements per eager block (1 MB of float32): 5–7× faster than whole batches
D_FLOOR = -1e4  # floor of the shifted logits z' (module docstring)
_LOG2E = 1.4426950408889634
_LN2_HI = 0.693145751953125  # ln 2 split so that n · _LN2_HI is exact in float32 (Cody–Waite)
_LN2_LO = 1.428606765330187e-06
_ROUND = 12582912.0  # 1.5 · 2²³: adding it rounds a float32 to an integer held in the low mantissa bits
# exp(r) ≈ 1 + r·(c1 + r·(c2 + …)) on [−ln2/2, ln2/2]: least-squares fit of the relative error on
# Chebyshev nodes, constant fixed at 1 so that exp(0) = 1 exactly; max relative error 1.04e-7
_EXP_POLY = (0.9999995316748534, 0.499991410332394, 0.16668114265113446, 0.041898732028908404,
             0.008261531003507957)
_KERNELS: dict = {}
_COMPILE_FAILED: list[str] = []
STAT_NAMES = ("teacher_pred", "student_pred", "teacher_conf", "student_conf", "teacher_margin",
              "student_margin", "teacher_entropy", "student_entropy", "kl_ts", "kl_st")
TEMPERATURE_KEY = b"kdata_temperature"  # schema metadata of a scores table: the T its statistics are at


def with_temperature(table, temperature: float):
    """``table`` (a pyarrow Table of statistics) with ``temperature`` recorded in its schema metadata
    (``TEMPERATURE_KEY``), so a reader can tell the temperature its statistics were computed at."""
    meta = dict(table.schema.metadata or {})
    meta[TEMPERATURE_KEY] = repr(float(temperature)).encode()
    return table.replace_schema_metadata(meta)


def recorded_temperature(table) -> float | None:
    """The temperature ``with_temperature`` recorded on ``table``, or None (not recorded)."""
    raw = (table.schema.metadata or {}).get(TEMPERATURE_KEY)
    try:
        return float(raw) if raw is not None else None
    except ValueError:
        return None


def _exp_neg(x: torch.Tensor) -> torch.Tensor:
    """exp(x) for x ≤ 0 as plain arithmetic the compiler vectorises: x = n·ln2 + r with |r| ≤ ln2/2,
    exp(r) by a degree-5 polynomial, 2ⁿ by writing n into the exponent bits (Cody & Waite 1980;
    Muller, *Elementary Functions*, ch. 11). Relative error ≤ 3e-7 (tested). Inputs below −87 are
    clamped: exp(−87) ≈ 1.6e-38 is nothing next to S ≥ 1."""
    x = x.clamp_min(-87.0)
    y = x * _LOG2E + _ROUND  # low mantissa bits of y now hold n = round(x / ln 2)
    n = y - _ROUND
    r = (x - n * _LN2_HI) - n * _LN2_LO
    c1, c2, c3, c4, c5 = _EXP_POLY
    p = 1.0 + r * (c1 + r * (c2 + r * (c3 + r * (c4 + r * c5))))
    return p * ((y.view(torch.int32) - (0x4B400000 - 127)) << 23).view(torch.float32)


def _row_stats(t: torch.Tensor, s: torch.Tensor, inv_temp: float, idx_c: torch.Tensor):
    """Every per-row statistic (``STAT_NAMES`` order) plus max z/T and log S of both sides, from
    one set of row reductions (module docstring): written for the compiler, which turns it into
    one loop nest per row. Eagerly it would be ~40 passes over N × C; ``_row_stats_eager`` is the
    same statistics in few eager passes. ``idx_c`` is ``arange(C) + C`` as float32."""
    zt, zs = t.float() * inv_temp, s.float() * inv_temp
    mt, ms = zt.amax(-1, keepdim=True), zs.amax(-1, keepdim=True)
    dt, ds = (zt - mt).clamp_min(D_FLOOR), (zs - ms).clamp_min(D_FLOOR)
    et, es = _exp_neg(dt), _exp_neg(ds)
    below_t, below_s = dt < 0, ds < 0
    st_, ss = et.sum(-1), es.sum(-1)
    a, b = (et * dt).sum(-1), (et * ds).sum(-1)
    cs, d = (es * ds).sum(-1), (es * dt).sum(-1)
    # Σ over the maxima of (index + C): one maximum at i gives i + C < 2C, two or more give ≥ 2C.
    # So one masked sum yields the prediction and flags ties (cheaper than argmin + a count).
    c = float(idx_c.shape[0])
    kt = torch.where(below_t, 0.0, idx_c).sum(-1)
    ks = torch.where(below_s, 0.0, idx_c).sum(-1)
    tied_t, tied_s = kt >= 2 * c, ks >= 2 * c
    # runner-up below the maximum; with ties at the top it is the maximum itself
    neg = float("-inf")
    t2 = torch.where(tied_t, 0.0, torch.where(below_t, dt, neg).amax(-1))
    s2 = torch.where(tied_s, 0.0, torch.where(below_s, ds, neg).amax(-1))
    lst, lss = torch.log(st_), torch.log(ss)
    return (
        # rows with ties get −1 here; ``_fix_ties`` gives them the first maximum, as argmax does
        torch.where(tied_t, -1.0, kt - c).int(), torch.where(tied_s, -1.0, ks - c).int(),
        1.0 / st_, 1.0 / ss, (1.0 - torch.exp(t2)) / st_, (1.0 - torch.exp(s2)) / ss,
        lst - a / st_, lss - cs / ss,
        ((a - b) / st_ - lst + lss).clamp_min(0), ((cs - d) / ss - lss + lst).clamp_min(0),
        mt[:, 0], ms[:, 0], lst, lss,
    )


def _row_stats_eager(t: torch.Tensor, s: torch.Tensor, inv_temp: float):
    """``_row_stats`` for small batches and GPUs, through library log-softmax and top-2."""
    zt, zs = t.float() * inv_temp, s.float() * inv_temp
    out = []
    for z in (zt, zs):
        top = torch.topk(z, min(2, z.shape[-1]), dim=-1).values
        z = torch.maximum(z, top[:, :1] + D_FLOOR)  # as the kernels floor z'
        lse = torch.logsumexp(z, -1)
        p = torch.exp(top - lse[:, None])
        out.append((z.argmax(-1).int(), p[:, 0], p[:, 0] - (p[:, 1] if p.shape[1] > 1 else 0.0),
                    top[:, 0], lse - top[:, 0], z - lse[:, None]))
    (pt, ct, mgt, mt, lst, lt), (ps, cs, mgs, ms, lss, ls) = out
    et, es = lt.exp(), ls.exp()
    d = lt - ls
    return (pt, ps, ct, cs, mgt, mgs, -(et * lt).sum(-1), -(es * ls).sum(-1),
            (et * d).sum(-1).clamp_min(0), (es * d).sum(-1).neg_().clamp_min(0), mt, ms, lst, lss)


def _fix_ties(r: tuple, t: torch.Tensor, s: torch.Tensor) -> tuple:
    """Predictions of rows with several maxima: the first of them, as ``argmax`` gives."""
    for j, logits in ((0, t), (1, s)):
        tied = r[j] < 0
        if bool(tied.any()):
            r[j][tied] = logits[tied].float().argmax(-1).int()
    return r


def _compiled():
    if "k" not in _KERNELS:
        options = {}
        try:  # let the C++ compiler fuse multiply–adds (the polynomial, the weighted sums): −10% time
            import torch._inductor.config as inductor_config

            if hasattr(inductor_config.cpp, "enable_floating_point_contract_flag"):
                options["cpp.enable_floating_point_contract_flag"] = "fast"
        except Exception:
            pass
        _KERNELS["k"] = torch.compile(_row_stats, dynamic=False, options=options or None)
    return _KERNELS["k"]


BACKENDS = ("native", "compiled", "eager")


def choose_backend(device: torch.device | str, c: int, work: int, backend: str | None = None) -> str:
    """The statistics backend for (·, C) logits on ``device`` and ``work`` = rows × classes in all:
    ``backend`` if given (else ``$KDATA_STATS_BACKEND``), otherwise ``native`` on a CPU where
    ``kdata.core.native`` builds, ``compiled`` (``torch.compile``) on other CPUs once the work repays the
    compile, ``eager`` for the rest (and GPUs)."""
    backend = backend or os.environ.get("KDATA_STATS_BACKEND") or None
    cpu = torch.device(device).type == "cpu"
    if backend is not None:
        if backend not in BACKENDS:
            raise ValueError(f"statistics backend {backend!r}: expected one of {', '.join(BACKENDS)}")
        if backend == "native" and not (cpu and native.available()):
            raise RuntimeError(native.status() if cpu else "native statistics run on the CPU only")
        return backend if cpu else "eager"
    if cpu and native.available():
        return "native"
    if cpu and not _COMPILE_FAILED and c < 1 << 22 and work >= COMPILE_MIN:  # index sums exact below 2²⁴
        return "compiled"
    return "eager"


def _native_stats(t: torch.Tensor, s: torch.Tensor, inv: float, k: int = 0):
    pred, out, top = native.row_stats(t, s, inv_temp=inv, k=k)
    return (pred[0], pred[1], *out.unbind(0)), top


def row_stats(t: torch.Tensor, s: torch.Tensor, *, temperature: float = 1.0,
              backend: str | None = None) -> tuple[torch.Tensor, ...]:
    """``STAT_NAMES`` plus max z/T and log S of both sides, over (N, C) logits, by ``backend``
    (default: ``choose_backend`` for this batch); ``compiled`` falls back to eager if compiling
    fails."""
    n, c = t.shape
    inv = 1.0 / temperature
    backend = choose_backend(t.device, c, n * c, backend)
    if backend == "native":
        return _native_stats(t, s, inv)[0]
    if backend == "compiled" and not _COMPILE_FAILED:
        try:
            idx_c = torch.arange(c, 2 * c, dtype=torch.float32)
            return _fix_ties(_chunked(_compiled(), t, s, inv, idx_c), t, s)
        except Exception as exc:  # no C++ compiler, unsupported platform…
            _COMPILE_FAILED.append(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            warn(f"torch.compile unavailable ({_COMPILE_FAILED[-1][:120]}); using eager statistics", note=True)
    if t.device.type != "cpu" or n * c <= EAGER_BLOCK:
        return _row_stats_eager(t, s, inv)
    rows = max(1, EAGER_BLOCK // c)  # small blocks: intermediates stay in cache and in malloc's heap
    parts = [_row_stats_eager(t[i:i + rows], s[i:i + rows], inv) for i in range(0, n, rows)]
    return tuple(torch.cat(xs) for xs in zip(*parts))


def chunk_rows(c: int) -> int:
    """Rows per compiled call for C classes (the last call is padded to it)."""
    return max(64, min(16_384, CHUNK_ELEMS // max(c, 1)))


def _chunked(kernel, t, s, inv, idx_c):
    n, c = t.shape
    rows = chunk_rows(c)
    parts = []
    for i in range(0, n, rows):
        a, b = t[i:i + rows], s[i:i + rows]
        m = a.shape[0]
        if m < rows:  # pad so that one compiled shape serves every chunk
            a = torch.cat([a.float(), a.new_zeros((rows - m, c), dtype=torch.float32)])
            b = torch.cat([b.float(), b.new_zeros((rows - m, c), dtype=torch.float32)])
        parts.append([x[:m] for x in kernel(a.float(), b.float(), inv, idx_c)])
    if len(parts) == 1:
        return tuple(parts[0])
    return tuple(torch.cat(xs) for xs in zip(*parts))


def logit_stats(t_logits, s_logits, *, temperature: float = 1.0, backend: str | None = None,
                chunk: int = 65_536) -> dict[str, np.ndarray]:
    """Per-row KL both ways, entropies, confidences, margins and predictions of two (N, C) arrays
    (numpy or torch), streamed ``chunk`` rows at a time so memory stays O(chunk × C)."""
    n, c = t_logits.shape
    if tuple(s_logits.shape) != (n, c):
        raise KdataError(f"logit_stats: teacher logits {tuple(t_logits.shape)} vs student {tuple(s_logits.shape)}")
    device = t_logits.device if isinstance(t_logits, torch.Tensor) else "cpu"
    backend = choose_backend(device, c, n * c, backend)
    out: dict[str, np.ndarray] = {}
    with torch.inference_mode():
        for i in range(0, n, chunk):
            t, s = _tensor(t_logits[i:i + chunk]), _tensor(s_logits[i:i + chunk])
            for k, v in zip(STAT_NAMES, row_stats(t, s, temperature=temperature, backend=backend)):
                if k not in out:
                    out[k] = np.empty(n, dtype=np.int32 if k.endswith("pred") else np.float32)
                out[k][i:i + len(t)] = v.cpu().numpy()
    return out


def _tensor(a) -> torch.Tensor:
    """``a`` as a tensor, sharing its memory — except a read-only numpy array (an Arrow buffer's), which
    torch cannot share without a warning: that chunk is copied (as float32, which the kernels read)."""
    if isinstance(a, np.ndarray) and not a.flags.writeable:
        return torch.from_numpy(np.array(a, dtype=np.float32 if a.dtype == np.float64 else a.dtype))
    return torch.as_tensor(a)


def disagreement(teacher_logits: torch.Tensor, student_logits: torch.Tensor, *, temperature: float = 1.0,
                 topk: int = 5, label_idx: torch.Tensor | None = None,
                 backend: str | None = None) -> dict[str, torch.Tensor]:
    """Per-row statistics for one batch (float32 unless noted), plus the teacher's and student's
    top-k indices/probabilities and the teacher's top-k raw logits (the stored soft labels).
    ``backend`` forces a statistics backend (default: ``choose_backend`` for this batch); the
    native one also collects the top-k (k ≤ 16) in its pass, other backends use ``torch.topk``.
    Numpy arrays: ``logit_stats`` (statistics only) or ``torch.from_numpy`` first."""
    for name, z in (("teacher_logits", teacher_logits), ("student_logits", student_logits)):
        if not isinstance(z, torch.Tensor):
            raise KdataError(f"disagreement: {name} is a {type(z).__module__}.{type(z).__name__}, expected a "
                             "torch.Tensor of shape (N, C) (for numpy arrays: logit_stats, or torch.from_numpy)")
    if teacher_logits.shape != student_logits.shape:
        raise KdataError(f"disagreement: teacher logits {tuple(teacher_logits.shape)} vs student "
                         f"{tuple(student_logits.shape)}")
    t, s = teacher_logits.float(), student_logits.float()
    n, c = t.shape
    inv = 1.0 / temperature
    k = min(topk, c)
    backend = choose_backend(t.device, c, n * c, backend)
    if backend == "native" and k <= native.MAX_K:
        r, (t_idx, t_val, s_idx, s_val) = _native_stats(t, s, inv, k)
    else:
        r = row_stats(t, s, temperature=temperature, backend=backend)
        t_idx, s_idx = torch.topk(t, k, dim=-1).indices, torch.topk(s, k, dim=-1).indices
        t_val, s_val = torch.gather(t, 1, t_idx), torch.gather(s, 1, s_idx)
    out = dict(zip(STAT_NAMES, r))
    mt, ms, lst, lss = r[len(STAT_NAMES):]
    out["teacher_topk_idx"] = t_idx.int()
    out["teacher_topk_prob"] = torch.exp(t_val * inv - mt[:, None] - lst[:, None])
    out["teacher_topk_logit"] = t_val
    out["student_topk_idx"] = s_idx.int()
    out["student_topk_prob"] = torch.exp(s_val * inv - ms[:, None] - lss[:, None])
    out["agree"] = out["teacher_pred"] == out["student_pred"]
    if label_idx is not None:
        li = label_idx.long().to(t.device)
        lp = torch.exp(torch.gather(t, 1, li.clamp_min(0)[:, None])[:, 0] * inv - mt - lst)
        out["teacher_label_prob"] = torch.where(li >= 0, lp, torch.full_like(lp, float("nan")))
    else:
        out["teacher_label_prob"] = torch.full_like(out["teacher_conf"], float("nan"))
    return out
