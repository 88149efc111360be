"""The native backend of ``kdata.core.stats``: ``row_stats.c`` (AVX-512 or AVX2), built on first use.

The statistics are bound by ``exp``, and neither eager torch nor ``torch.compile`` reach the
machine's arithmetic: the hand-written kernel does one pass from memory and one from L1 per row,
``exp`` in about ten vector instructions (2ⁿ by ``vscalefps`` on AVX-512, by exponent bits on
AVX2), and collects
the top-k (prediction, margin, soft labels) from the few elements above a bound read off the lane
maxima, so no ``torch.topk`` pass is needed. ``benchmarks/select_speed.py`` measures it.

It is compiled once per machine with the system C compiler (``$CC``, else ``cc``) and
``-march=native`` into ``$KDATA_CACHE/native/`` (the file name carries a hash of the source, the
compiler and the CPU's flags, so a cache shared between machines never loads a foreign build; the
directory is made private, and a library there that another user could have written — the directory or
file writable by group or others, or not this user's — is never loaded: it is built again in a private
temporary directory, ``kdata.core.paths.private_cache_dir``), then called through ctypes, which
releases the GIL: rows are split over ``torch.get_num_threads()``
threads. The source targets AVX-512 where the CPU has it, else AVX2 + FMA (x86-64 since 2013;
``KDATA_NATIVE_ISA=avx2`` forces that build on an AVX-512 machine). Without a C compiler or either
instruction set (the source refuses to build) ``available()`` is False and ``kdata.core.stats`` uses its
other backends; ``status()`` says why.
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

from kdata.core.paths import only_mine, private_cache_dir

MAX_K = 16  # top-k the kernel collects (KD_MAXK in row_stats.c)
N_OUT = 12  # float outputs per row, in the order of kdata.core.stats.STAT_NAMES[2:] + (max t, max s, log S t, log S s)
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


def _isa(isa: str | None) -> str:
    isa = (isa or os.environ.get("KDATA_NATIVE_ISA") or "native").lower()
    if isa not in ("native", "avx2"):
        raise ValueError(f"KDATA_NATIVE_ISA={isa!r}: expected 'native' (the best the CPU has) or 'avx2'")
    return isa


def _private_tmp() -> str:
    """A directory of this process's own (0700), removed at exit: where the library is built when the
    cache cannot be trusted with it (``kdata.core.paths.private_cache_dir``)."""
    if "tmp" not in _STATE:
        import atexit

        _STATE["tmp"] = tempfile.mkdtemp(prefix="kdata-native-")
        atexit.register(shutil.rmtree, _STATE["tmp"], True)
    return _STATE["tmp"]


def _build(isa: str) -> ctypes.CDLL:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise RuntimeError("no C compiler (set $CC)")
    flags = _FLAGS + (["-mno-avx512f"] if isa == "avx2" else [])
    src = _SOURCE.read_bytes()
    key = hashlib.sha256(src + cc.encode() + " ".join(flags).encode() + _cpu_signature().encode()).hexdigest()[:16]
    home = private_cache_dir("native")  # None: a cache others can write; build for this process only
    lib_path = (home or Path(_private_tmp())) / f"row_stats-{key}.so"
    if lib_path.exists() and not only_mine(lib_path):  # planted or loosened: never loaded
        lib_path = Path(_private_tmp()) / lib_path.name
    if not lib_path.exists():
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=lib_path.parent)
        os.close(fd)
        try:
            res = subprocess.run([cc, *flags, "-o", tmp, str(_SOURCE), "-lm"], capture_output=True, text=True)
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
    lib.kd_isa.restype = ctypes.c_char_p
    _STATE[isa, "path"] = f"{lib.kd_isa().decode()}, {lib_path}"
    return lib


def _lib(isa: str | None = None) -> ctypes.CDLL | None:
    isa = _isa(isa)
    if (isa, "lib") not in _STATE:
        with _LOCK:
            if (isa, "lib") not in _STATE:
                try:
                    _STATE[isa, "lib"] = _build(isa)
                except Exception as exc:  # no compiler, no AVX2, not x86…
                    _STATE[isa, "lib"] = None
                    _STATE[isa, "why"] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return _STATE[isa, "lib"]


def available(isa: str | None = None) -> bool:
    """True if the kernel is built (or builds now) and loads on this machine."""
    if os.environ.get("KDATA_NATIVE", "1") == "0":
        return False
    return _lib(isa) is not None


def status(isa: str | None = None) -> str:
    """One line: which build is used (instruction set, file), or why none is."""
    if os.environ.get("KDATA_NATIVE", "1") == "0":
        return "native statistics: off (KDATA_NATIVE=0)"
    isa = _isa(isa)
    if _lib(isa) is None:
        return f"native statistics: unavailable ({_STATE[isa, 'why']})"
    return f"native statistics: {_STATE[isa, 'path']}"


def _pool(workers: int) -> ThreadPoolExecutor:
    pool = _STATE.get("pool")
    if pool is None or _STATE.get("pool_key") != (os.getpid(), workers):  # a forked child needs its own threads
        pool = _STATE["pool"] = ThreadPoolExecutor(workers, thread_name_prefix="kdata-stats")
        _STATE["pool_key"] = (os.getpid(), workers)
    return pool


def row_stats(t: torch.Tensor, s: torch.Tensor, *, inv_temp: float, k: int = 0, threads: int | None = None,
              isa: str | None = None):
    """(pred (2, N) int32, out (12, N) float32, top-k or None) for (N, C) float32 CPU logits;
    top-k is (teacher idx, teacher raw values, student idx, student raw values), each (N, k).
    ``isa="avx2"`` uses the AVX2 build even where AVX-512 is available."""
    lib = _lib(isa)
    if lib is None:
        raise RuntimeError(status(isa))
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
        parts = workers * 4  # a few blocks per thread: a thread slowed by other load does less
        step = -(-n // parts)
        for f in [_pool(workers).submit(run, i, min(n, i + step)) for i in range(0, n, step)]:
            f.result()
    return pred, out, (tuple(top) if k else None)
