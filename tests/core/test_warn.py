"""kdata's warnings go through Python's ``warnings`` module (a library caller filters or records them);
the kdata command shows each as one ``kdata: warning:``/``kdata: note:`` line on stderr."""

from __future__ import annotations

import warnings

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kdata.cli import main
from kdata.core.warn import KdataNote, KdataWarning, routed, shown_as_lines, warn


def test_a_library_caller_records_or_silences_them(capsys):
    with pytest.warns(KdataWarning, match="^something odd$"):
        warn("something odd")
    with pytest.warns(KdataNote):
        warn("for your information", note=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", KdataNote)
        warn("silenced", note=True)
    assert capsys.readouterr().err == ""


def test_shown_as_lines_prints_each_one_and_leaves_other_warnings_alone(capsys):
    with shown_as_lines():
        for _ in range(2):
            warn("a\nmulti-line   message")  # each time, one line
        warn("fyi", note=True)
        with pytest.warns(RuntimeWarning):
            warnings.warn("not kdata's", RuntimeWarning)
    assert capsys.readouterr().err == "kdata: warning: a multi-line message\n" * 2 + "kdata: note: fyi\n"
    with pytest.warns(KdataWarning):  # the state is restored on exit
        warn("after")


def test_the_kdata_command_shows_a_warning_as_one_line(tmp_path, capsys):
    p = np.full((6, 3), 0.1, np.float32)
    p[:, 0] = 0.8  # probabilities where logits belong: kdata.scoring.byo warns
    scores = tmp_path / "preds.parquet"
    pq.write_table(pa.table({"sample_id": [f"s{i}" for i in range(6)], "teacher_logits": list(p),
                             "student_logits": list(np.log(p))}), scores)
    assert main(["select", "--scores", str(scores), "--method", "random", "--budget", "3",
                 "--out", str(tmp_path / "o"), "--quiet"]) == 0
    err = [x for x in capsys.readouterr().err.splitlines() if "warning" in x]
    assert len(err) == 1 and err[0].startswith(f"kdata: warning: {scores}: column 'teacher_logits' looks like"), err


def test_routed_hands_them_to_a_sink_in_its_own_context_only(capsys):
    """``routed`` (what the flows use for the run log) takes this context's kdata warnings and nothing
    else: another thread's warnings and the process's filters are as they were."""
    import threading

    got, filters = [], list(warnings.filters)
    with routed(lambda message, category: got.append((message, category))):
        warn("to the sink")
        warn("a note", note=True)
        seen = []

        def other():
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                warn("from another thread")
            seen.extend(str(w.message) for w in caught)

        t = threading.Thread(target=other)
        t.start()
        t.join()
    assert got == [("to the sink", KdataWarning), ("a note", KdataNote)]
    assert seen == ["from another thread"] and warnings.filters == filters
    with pytest.warns(KdataWarning, match="^after$"):  # the route ends with its block
        warn("after")
    assert capsys.readouterr().err == ""
