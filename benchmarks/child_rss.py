"""Wall seconds and peak RSS of a command run as a child process (``getrusage`` of the children of a
small wrapper, so only the command's own peak is counted). Loaded by the benchmark scripts with
``runpy`` (``benchmarks/`` is not a package)."""

from __future__ import annotations

import subprocess
import sys

# runs a command as its child and reports (wall seconds, peak RSS of that child in MB, exit code)
WRAPPER = ("import resource, subprocess, sys, time\n"
           "t = time.perf_counter(); rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode\n"
           "print(f'MEASURE {time.perf_counter() - t:.2f} {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024:.0f} {rc}')")


def measure(cmd: list[str], *, env: dict | None = None) -> tuple[float, float]:
    """(wall seconds, peak RSS in MiB) of ``cmd``; exits with its output when it fails."""
    out = subprocess.run([sys.executable, "-c", WRAPPER, *cmd], capture_output=True, text=True, env=env)
    line = next((x for x in out.stdout.splitlines() if x.startswith("MEASURE")), None)
    if line is None or line.split()[3] != "0":
        sys.exit(f"failed: {' '.join(cmd)}\n{out.stdout[-2000:]}{out.stderr[-2000:]}")
    _, sec, rss, _ = line.split()
    return float(sec), float(rss)
