"""A script that calls kdata at its top level, without an ``if __name__ == "__main__":`` guard, and
asks for decode workers: Python's fork server re-runs it while starting them. It used to hang or end
in a traceback about a run "in use"; now it stops with one line saying what to do (a real subprocess,
real workers)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from kdata.core.main_guard import HINT, check_not_importing_main, unguarded_script


def test_an_unguarded_script_that_starts_workers_stops_with_the_fix(tmp_path):
    script = tmp_path / "curate.py"
    script.write_text(
        "from kdata.pipeline import RunOptions, SelectConfig, run_select\n"
        f"run_select(SelectConfig(method='kd3', budget='0.1'), out={str(tmp_path / 'out')!r},\n"
        "           opts=RunOptions(device='cpu', num_workers=2))\n")
    env = {**os.environ, "KDATA_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300,
                       cwd=tmp_path)
    assert "in use by another kdata run" not in p.stderr and HINT in p.stderr, p.stderr[-2000:]
    assert "forkserver.py" not in p.stderr and "runpy" not in p.stderr  # the workers say it in one line each
    if p.returncode != 0:  # the workers were needed: the run stops with the fix as its last line
        last = p.stderr.strip().splitlines()[-1]
        assert str(script) in last and HINT in last, p.stderr[-2000:]
        assert not (tmp_path / "out" / "manifest.json").exists()
    else:  # the scoring process finished the small pool before it needed a worker: the hint still shows
        assert (tmp_path / "out" / "manifest.json").exists()


def test_the_guard_check_is_quiet_in_a_normal_process(tmp_path):
    check_not_importing_main()  # not importing a main script for a child: nothing to say
    guarded = tmp_path / "ok.py"
    guarded.write_text("if __name__ == '__main__':\n    pass\n")
    unguarded = tmp_path / "bad.py"
    unguarded.write_text("print('top level')\n")
    main = sys.modules["__main__"]
    old = getattr(main, "__file__", None)
    try:
        main.__file__ = str(guarded)
        assert unguarded_script() is None
        main.__file__ = str(unguarded)
        assert unguarded_script() == str(unguarded)
    finally:
        if old is None:
            del main.__file__
        else:
            main.__file__ = old
    assert Path(str(unguarded)).exists()
