"""Fused per-row teacher–student statistics over logits, chunked, fast at scale.

``logit_stats(t, s)`` returns KL(t‖s), both entropies, both margins and both predictions in one
pass over each chunk of rows. On a CPU these statistics are bound by ``exp``/``log``, not by
memory (eager torch/numpy reach ≈ 3% of a plain ``sum``'s bandwidth here); ``torch.compile``
fuses log-softmax, KL and entropies into one vectorised loop and reaches ≈ 25–30% after a
one-off compile of ~20 s. So the compiled kernel is used only when the work is large
(rows × classes ≥ ``COMPILE_MIN``, default 2·10⁸ ≈ 200k rows at C = 1000), eager otherwise —
same results either way. Memory is O(chunk × C) whatever N is.
"""

from __future__ import annotations

import os

import numpy as np
import torch

COMPILE_MIN = int(os.environ.get("KDATA_COMPILE_MIN", 200_000_000))
_COMPILED = {}


def _stats(t: torch.Tensor, s: torch.Tensor, inv_temp: float):
    """One exp per element and side. With z' = z − max z, e = exp(z'), S = Σ e:
    H(p) = log S − Σ e z' / S, KL(t‖s) = Σ e_t (z'_t − z'_s) / S_t − log S_t + log S_s,
    margin = (1 − exp(z'_2nd)) / S, prediction = first index with z' = 0 — all plain reductions
    of the same pass over the row, which the compiler fuses and vectorises (``argmax`` and
    ``topk`` do not vectorise and cost 3× the whole rest)."""
    zt, zs = t.float() * inv_temp, s.float() * inv_temp
    mt, ms = zt.amax(-1, keepdim=True), zs.amax(-1, keepdim=True)
    dt, ds = zt - mt, zs - ms
    et, es = torch.exp(dt), torch.exp(ds)
    st_, ss = et.sum(-1), es.sum(-1)
    lst, lss = torch.log(st_), torch.log(ss)
    ht = lst - (et * dt).sum(-1) / st_
    hs = lss - (es * ds).sum(-1) / ss
    kl = (et * (dt - ds)).sum(-1) / st_ - lst + lss
    t2 = ((dt == 0) * -1e30 + dt).amax(-1)  # second largest (ties at the top count once)
    s2 = ((ds == 0) * -1e30 + ds).amax(-1)
    mgt = (1.0 - torch.exp(t2)) / st_
    mgs = (1.0 - torch.exp(s2)) / ss
    ar = torch.arange(zt.shape[-1], dtype=torch.float32, device=zt.device)
    big = float(zt.shape[-1])
    pt = torch.where(dt == 0, ar, big).amin(-1)
    ps = torch.where(ds == 0, ar, big).amin(-1)
    return kl.clamp_min(0), ht, hs, mgt, mgs, pt, ps


def _kernel(compiled: bool):
    if not compiled:
        return _stats
    if "k" not in _COMPILED:
        _COMPILED["k"] = torch.compile(_stats, dynamic=True)
    return _COMPILED["k"]


def logit_stats(t_logits, s_logits, *, temperature: float = 1.0, chunk: int | None = None,
                compile: bool | None = None) -> dict[str, np.ndarray]:
    """Per-row kl_ts, teacher/student entropy, teacher/student margin and predictions (numpy)."""
    n, c = t_logits.shape
    if s_logits.shape != (n, c):
        raise ValueError(f"teacher logits {t_logits.shape} vs student {s_logits.shape}")
    use_compiled = (n * c >= COMPILE_MIN) if compile is None else compile
    fn = _kernel(use_compiled)
    chunk = chunk or max(1024, (1 << 23) // max(c, 1))  # ≈ 32 MB of float32 per array
    names = ("kl_ts", "teacher_entropy", "student_entropy", "teacher_margin", "student_margin",
             "teacher_pred", "student_pred")
    out = {k: np.empty(n, dtype=np.int32 if k.endswith("pred") else np.float32) for k in names}
    with torch.inference_mode():
        for i in range(0, n, chunk):
            t = torch.as_tensor(t_logits[i:i + chunk])
            s = torch.as_tensor(s_logits[i:i + chunk])
            for k, v in zip(names, fn(t, s, 1.0 / temperature)):
                out[k][i:i + len(t)] = v.numpy()
    return out
