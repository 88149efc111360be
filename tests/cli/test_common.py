"""``kdata.cli.common``: progress bars are drawn on a terminal's stderr, and not with ``--json`` or
``--quiet`` (a script reading the JSON owns the terminal too); the summary names the files written
beside the shards. Real ``kdata select`` runs whose stderr is a pseudo-terminal."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = str(Path(__file__).resolve().parents[2])  # this checkout's kdata, whatever is installed


def _select_on_a_terminal(tmp_path, *flags: str) -> tuple[str, str]:
    main, side = pty.openpty()
    out = tmp_path / f"out{len(flags)}{'-'.join(flags)}"
    proc = subprocess.Popen([sys.executable, "-m", "kdata.cli", "select", "--method", "random", "--budget", "30",
                             "--no-cache", "--out", str(out), *flags], stdout=subprocess.PIPE, stderr=side,
                            env={**os.environ, "COLUMNS": "100", "TERM": "xterm", "PYTHONPATH": ROOT})
    os.close(side)
    err = b""
    while True:
        try:
            chunk = os.read(main, 65536)
        except OSError:  # the child closed its end
            break
        if not chunk:
            break
        err += chunk
    stdout = proc.stdout.read().decode()
    assert proc.wait(timeout=300) == 0, err.decode(errors="replace")
    os.close(main)
    return stdout, err.decode(errors="replace")


@pytest.mark.usefixtures("builtin_models")
def test_bars_on_a_terminal_and_none_with_json_or_quiet(tmp_path):
    stdout, err = _select_on_a_terminal(tmp_path)
    assert "scoring" in err and "━" in err  # the bars: the check below could fail
    assert "  with manifest.json, decisions.parquet (every row's decision), README.md (data card), report.html\n" \
        in stdout  # the summary names what the run wrote beside its shards
    for flags in (["--json"], ["--quiet"]):
        stdout, err = _select_on_a_terminal(tmp_path, *flags)
        assert "━" not in err and "scoring" not in err, (flags, err)
        if flags == ["--json"]:
            assert json.loads(stdout)["counts"]["kept"] == 30
