"""Peak memory of reading a pool unit, measured in a fresh process (a test's own process has just written
the large file, and its RSS would hide what the read costs)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def peak_lines(path: Path, body: str) -> list[str]:
    """Run ``body`` (``unit`` is the first unit of ``open_pool(path)``) in a fresh process; its printed
    lines, then its peak RSS growth in MiB over the process after imports and opening.

    The peak is ``VmHWM`` (this process's own high-water mark): ``getrusage``'s ``ru_maxrss`` keeps
    the forking parent's RSS across ``exec``, and the test's parent has just written a large file."""
    code = f"""
from kdata.core.errors import KdataError
from kdata.pools.spec import open_pool
def hwm():
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
unit = open_pool({str(path)!r}).units[0]
before = hwm()
try:
{body}
except KdataError as exc:
    print("refused", exc)
print((hwm() - before) // 1024)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip().split("\n")
