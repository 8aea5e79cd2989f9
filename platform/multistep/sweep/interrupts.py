"""SIGINT and SIGTERM in the sweep driver: an interrupted sweep must never look finished (docs/reliability.md).

Outside Ray Tune's loop a signal raises KeyboardInterrupt at once (Ray's start, the shared assets, the results).
While Tune runs, the first signal asks Tune to stop through its own graceful path (SIGUSR1, Tune's documented
interrupt: trials stop, the experiment state is saved whole, so `--resume` finds the unfinished trials unfinished);
`fit` then returns and the driver, seeing `Interrupts.signal` set, closes the runs as KILLED. A second signal
raises KeyboardInterrupt at once. Tune's own SIGINT handler is switched off (TUNE_DISABLE_SIGINT_HANDLER) so the
driver always knows that it was interrupted.

A KeyboardInterrupt raised while the main thread runs a garbage-collector callback (e.g. SQLAlchemy's) is swallowed
by Python; so until the driver acknowledges the interrupt (its cleanup has begun), the interrupt is delivered again
every second, and Python's report of the swallowed one ("Exception ignored in ...", a traceback) is not printed.
"""

from __future__ import annotations

import _thread
import logging
import os
import signal
import sys
import threading
import time

log = logging.getLogger(__name__)


class Interrupts:
    """Context manager owning SIGINT / SIGTERM (and SIGUSR1 until Tune takes it) in the main thread."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signal: int | None = None  # the first signal received
        self.in_tune = False  # inside Tuner.fit: ask Tune to stop instead of raising
        self._old: dict[int, object] = {}
        self.acknowledged = False  # the driver's cleanup has started: no more redeliveries
        self._insisting = False

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (*self.SIGNALS, signal.SIGUSR1):
                self._old[sig] = signal.signal(sig, self._handle)
            self._old_unraisable = sys.unraisablehook
            sys.unraisablehook = self._unraisable
        return self

    def _unraisable(self, info) -> None:
        """Our KeyboardInterrupt swallowed by a finalizer: redelivered (_insist), so nothing to report."""
        if not (issubclass(info.exc_type, KeyboardInterrupt) and self.signal is not None):
            self._old_unraisable(info)

    def reclaim(self) -> None:
        """After ray.init: Ray's core worker installs a C++ SIGTERM handler that aborts the process; take it back."""
        if self._old:
            signal.signal(signal.SIGTERM, self._handle)

    def acknowledge(self) -> None:
        """Called first thing where the driver handles the interrupt (its except blocks)."""
        self.acknowledged = True

    def _insist(self) -> None:
        if self._insisting:
            return
        self._insisting = True

        def again():
            while True:
                time.sleep(1.0)
                if self.acknowledged:
                    return
                _thread.interrupt_main(self.signal)  # the same handler again, in the main thread

        threading.Thread(target=again, name="interrupt-redelivery", daemon=True).start()

    def __exit__(self, *exc):
        self.acknowledged = True
        if self._old:
            sys.unraisablehook = self._old_unraisable
        for sig, old in self._old.items():
            # SIGUSR1 belongs to Tune once it ran (its interrupt path); if Tune never took it, it is restored too
            if sig != signal.SIGUSR1 or signal.getsignal(sig) == self._handle:
                signal.signal(sig, old)
        return False

    def _handle(self, sig, frame):
        first = self.signal is None
        if first:
            self.signal = sig if sig != signal.SIGUSR1 else signal.SIGINT
        if sig == signal.SIGUSR1 or not (self.in_tune and first):
            if not self.acknowledged:
                self._insist()
            raise KeyboardInterrupt  # not (yet) in Tune's loop, or a second signal: stop now
        log.info(f"{signal.Signals(sig).name}: stopping the trials and saving Tune's state (again to stop at once)")
        os.kill(os.getpid(), signal.SIGUSR1)  # Tune's graceful interrupt (its handler, installed by fit)
