"""The native backend of ``kdata.stats``: ``row_stats.c`` (AVX-512), built on first use.

The statistics are bound by ``exp``, and neither eager torch nor ``torch.compile`` reach the
machine's arithmetic: the hand-written kernel does one pass from memory and one from L1 per row,
``exp`` in 9 vector instructions (``vscalefps`` instead of exponent-bit arithmetic), and collects
the top-k (prediction, margin, soft labels) from the few elements above a bound read off the lane
maxima, so no ``torch.topk`` pass is needed. ``benchmarks/select_speed.py`` measures it.

It is compiled once per machine with the system C compiler (``$CC``, else ``cc``) and
``-march=native`` into ``$KDATA_CACHE/native/`` (the file name carries a hash of the source, the
compiler and the CPU's flags, so a cache shared between machines never loads a foreign build),
then called through ctypes, which releases the GIL: rows are split over ``torch.get_num_threads()``
threads. Without a C compiler or AVX-512 (the source refuses to build) ``available()`` is False and
``kdata.stats`` uses its other backends; ``status()`` says why.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from .paths import cache_dir

MAX_K = 16  # top-k the kernel collects (KD_MAXK in row_stats.c)
N_OUT = 12  # float outputs per row, in the order of kdata.stats.STAT_NAMES[2:] + (max t, max s, log S t, log S s)
_SOURCE = Path(__file__).with_name("row_stats.c")
_FLAGS = ["-O3", "-march=native", "-shared", "-fPIC"]
_LOCK = threading.Lock()
_STATE: dict = {}


def _cpu_signature() -> str:
    sig = platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "model name", "Features", "CPU part")):
                sig += line
                if line.startswith(("flags", "Features")):
                    break
    except OSError:
        sig += platform.processor()
    return sig


def _build() -> ctypes.CDLL:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise RuntimeError("no C compiler (set $CC)")
    src = _SOURCE.read_bytes()
    key = hashlib.sha256(src + cc.encode() + " ".join(_FLAGS).encode() + _cpu_signature().encode()).hexdigest()[:16]
    lib_path = cache_dir("native") / f"row_stats-{key}.so"
    if not lib_path.exists():
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=lib_path.parent)
        os.close(fd)
        try:
            res = subprocess.run([cc, *_FLAGS, "-o", tmp, str(_SOURCE), "-lm"], capture_output=True, text=True)
            if res.returncode != 0:
                err = (res.stderr.strip().splitlines() or ["exit code %d" % res.returncode])
                msg = next((x for x in err if "#error" in x or "error:" in x), err[0])
                raise RuntimeError(f"{Path(cc).name} failed: {msg.strip()[:200]}")
            os.replace(tmp, lib_path)  # atomic: concurrent builders each rename a complete file
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    lib = ctypes.CDLL(str(lib_path))
    p, i64 = ctypes.c_void_p, ctypes.c_int64
    lib.kd_row_stats.argtypes = [p, p, i64, i64, i64, ctypes.c_float, ctypes.c_int, p, i64, p, p, p, p, p]
    lib.kd_row_stats.restype = ctypes.c_int
    _STATE["path"] = str(lib_path)
    return lib


def _lib() -> ctypes.CDLL | None:
    if "lib" not in _STATE:
        with _LOCK:
            if "lib" not in _STATE:
                try:
                    _STATE["lib"] = _build()
                except Exception as exc:  # no compiler, no AVX-512, not x86…
                    _STATE["lib"] = None
                    _STATE["why"] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return _STATE["lib"]


def available() -> bool:
    """True if the kernel is built (or builds now) and loads on this machine."""
    if os.environ.get("KDATA_NATIVE", "1") == "0":
        return False
    return _lib() is not None


def status() -> str:
    """One line: where the kernel was loaded from, or why it is not used."""
    if os.environ.get("KDATA_NATIVE", "1") == "0":
        return "native statistics: off (KDATA_NATIVE=0)"
    if _lib() is None:
        return f"native statistics: unavailable ({_STATE['why']})"
    return f"native statistics: {_STATE['path']}"


def _pool(workers: int) -> ThreadPoolExecutor:
    pool = _STATE.get("pool")
    if pool is None or _STATE.get("pool_key") != (os.getpid(), workers):  # a forked child needs its own threads
        pool = _STATE["pool"] = ThreadPoolExecutor(workers, thread_name_prefix="kdata-stats")
        _STATE["pool_key"] = (os.getpid(), workers)
    return pool


def row_stats(t: torch.Tensor, s: torch.Tensor, *, inv_temp: float, k: int = 0, threads: int | None = None):
    """(pred (2, N) int32, out (12, N) float32, top-k or None) for (N, C) float32 CPU logits;
    top-k is (teacher idx, teacher raw values, student idx, student raw values), each (N, k)."""
    lib = _lib()
    if lib is None:
        raise RuntimeError(status())
    if not 0 <= k <= MAX_K:
        raise ValueError(f"native top-k supports k <= {MAX_K}, got {k}")
    t = t.detach().float().contiguous()
    s = s.detach().float().contiguous()
    n, c = t.shape
    k = min(k, c)
    out = torch.empty((N_OUT, n), dtype=torch.float32)
    pred = torch.empty((2, n), dtype=torch.int32)
    top = [torch.empty((n, k), dtype=dt) for dt in (torch.int32, torch.float32, torch.int32, torch.float32)]
    if n == 0:
        return pred, out, (tuple(top) if k else None)
    tp, sp, op, pp = t.data_ptr(), s.data_ptr(), out.data_ptr(), pred.data_ptr()
    kp = [x.data_ptr() for x in top]

    def run(lo: int, hi: int) -> None:
        rc = lib.kd_row_stats(tp + 4 * lo * c, sp + 4 * lo * c, hi - lo, c, c, inv_temp, k, op + 4 * lo, n,
                              pp + 4 * lo, *(q + 4 * lo * k for q in kp))
        if rc != 0:
            raise RuntimeError(f"kd_row_stats failed ({rc})")

    workers = threads or torch.get_num_threads()
    if workers <= 1 or n * c < (1 << 20) or n < 2 * workers:
        run(0, n)
    else:
        parts = workers * int(os.environ.get("KP", "4"))  # a few blocks per thread: a thread slowed by other load does less
        step = -(-n // parts)
        for f in [_pool(workers).submit(run, i, min(n, i + step)) for i in range(0, n, step)]:
            f.result()
    return pred, out, (tuple(top) if k else None)
