"""``UnitWriter``: units written in order on one thread; errors raised in the order they would have been in turn."""

from __future__ import annotations

import threading
import time

import pytest

from kdata.scoring.unit_writer import UnitWriter


def test_units_are_written_in_order_on_one_thread_and_all_before_close_returns():
    seen = []

    def write(i):
        time.sleep(0.01 * (5 - i))  # earlier units take longer: order still kept
        seen.append((i, threading.current_thread().name))

    w = UnitWriter(write, behind=True)
    for i in range(5):
        w.submit(i)
    w.close()
    assert [i for i, _ in seen] == list(range(5))
    assert {name for _, name in seen} != {threading.current_thread().name}
    assert not any(t.name.startswith("kdata-write-units") for t in threading.enumerate())
    inline = UnitWriter(lambda i: seen.append((i, threading.current_thread().name)), behind=False)
    inline.submit(9)
    assert seen[-1] == (9, threading.current_thread().name)


def test_the_first_failed_write_is_the_error_and_a_later_run_error_does_not_hide_it():
    def write(i):
        time.sleep(0.02)
        if i in (1, 2):
            raise OSError(f"disk full writing unit {i}")

    w = UnitWriter(write, behind=True)
    for i in range(4):
        w.submit(i)
    with pytest.raises(OSError, match="unit 1"):
        w.close()

    w = UnitWriter(write, behind=True)
    w.submit(0)
    w.submit(1)
    later = ValueError("unit 3 cannot be read")
    assert str(w.close_after(later)) == "disk full writing unit 1"  # the earlier unit's write stands
    w = UnitWriter(write, behind=True)
    w.submit(0)
    assert w.close_after(later) is later  # no write failed: the run's own error
