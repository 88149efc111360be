"""What ``kdata train`` prints when the last epoch ended below the start: the warning names the weights that
were saved when they are not the last epoch's (``kdata.cli.train.warning_lines``)."""

from __future__ import annotations

from kdata.cli.train import warning_lines

LOG = {"eval": "val/", "accuracy_before": 0.3667, "accuracy_last": 0.0333, "worse_than_before": True}


def test_the_warning_names_the_saved_epoch_when_it_is_not_the_last():
    line, = warning_lines({**LOG, "accuracy": 1.0, "kept": {"epoch": 7}})
    assert line == ("kdata: warning: training made the student worse on val/ (0.3667 before, 0.0333 after the last "
                    "epoch; the saved weights are epoch 7's (1.0000))")


def test_the_warning_stands_alone_when_the_last_epoch_was_saved():
    line, = warning_lines({**LOG, "accuracy": 0.0333, "kept": {"epoch": 12}})
    assert line.endswith("(0.3667 before, 0.0333 after the last epoch)")
    assert warning_lines({**LOG, "worse_than_before": False, "accuracy": 0.5}) == []
