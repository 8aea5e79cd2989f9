"""sweep/interrupts.py: an interrupt swallowed by a finalizer is delivered again and reported by nobody."""

import signal
import sys

import pytest

from multistep.sweep.interrupts import Interrupts


class RaisesWhenCollected:
    def __init__(self, exc):
        self.exc = exc

    def __del__(self):
        raise self.exc


def test_a_keyboard_interrupt_swallowed_by_a_finalizer_is_not_reported(monkeypatch):
    reported = []  # what Python's hook (here: a recorder) would print as "Exception ignored in ..." with a traceback
    monkeypatch.setattr(sys, "unraisablehook", lambda info: reported.append(info.exc_type))
    with pytest.raises(KeyboardInterrupt):
        with Interrupts() as stop:
            stop.signal = signal.SIGINT  # ours: Python swallows it in __del__, the driver gets it redelivered
            RaisesWhenCollected(KeyboardInterrupt())  # collected at once: Python calls sys.unraisablehook
            RaisesWhenCollected(ValueError("a real bug in a finalizer"))  # anything else is still reported
            assert reported == [ValueError]
            raise KeyboardInterrupt
    RaisesWhenCollected(KeyboardInterrupt())  # outside the context: the previous hook again
    assert reported == [ValueError, KeyboardInterrupt]
