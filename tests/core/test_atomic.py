"""kdata.core.atomic: a killed writer's temporary files are removed by the next owner of the path."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from kdata.core.atomic import atomic_path, drop_partial_writes


def test_a_killed_writers_temporary_file_is_dropped_and_nothing_else(tmp_path):
    target = tmp_path / "entry.quarantine.json"
    code = ("import os, sys, time\nfrom kdata.core.atomic import atomic_path\n"
            f"with atomic_path({str(target)!r}) as tmp:\n"
            "    tmp.write_text('half')\n    print(tmp, flush=True)\n    time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    tmp = proc.stdout.readline().strip()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    assert os.path.exists(tmp) and os.path.basename(tmp).startswith(".entry.quarantine.json.") and tmp.endswith(".tmp")
    keep = [tmp_path / "entry.parquet", tmp_path / ".other.json.abc.tmp", tmp_path / ".entry.quarantine.json"]
    for p in keep:
        p.write_text("x")
    drop_partial_writes(tmp_path / "entry.parquet", target)
    assert not os.path.exists(tmp) and all(p.exists() for p in keep) and not target.exists()
    with atomic_path(target) as t:  # the next writer completes as usual
        t.write_text("whole")
    assert target.read_text() == "whole"
