"""What the user sees of a sweep's running trials. On a terminal: one live line per running trial (tqdm: the trial,
its method and S, iteration / total, loss, ETA), with each trial's start, end or failure printed above them. Not on
a terminal (a log file, CI, Ray Jobs): one plain line per event, the same facts, ETA included."""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field

from multistep.logs import on_terminal

log = logging.getLogger(__name__)


@dataclass
class _Running:
    name: str  # "[trial 3/27] mcd S=4"
    total: int  # training iterations
    t0: float = field(default_factory=time.monotonic)
    first: int | None = None  # the first iteration reported (a resumed trial starts past 0)
    bar: object = None


class TrialProgress:
    def __init__(self, n: int, live: bool | None = None):
        self.n = n
        self.live = on_terminal() if live is None else live
        self.running: dict[int, _Running] = {}

    def line(self, text: str) -> None:
        """A line above the live ones (or a plain line)."""
        if self.live:
            from tqdm import tqdm

            tqdm.write(text, file=sys.stdout)
        else:
            log.info(text)

    def started(self, i: int, what: str, total: int, note: str = "") -> None:
        r = self.running[i] = _Running(f"[trial {i + 1}/{self.n}] {what}", total)
        self.line(f"{r.name} started{note}")
        if self.live:
            from tqdm import tqdm

            r.bar = tqdm(total=total, desc=r.name, unit="it", leave=False, dynamic_ncols=True, file=sys.stdout)

    def result(self, i: int, iteration: int, loss: float | None = None) -> None:
        r = self.running.get(i)
        if r is None:
            return
        loss_text = "" if loss is None else f"loss {loss:.4g}"
        if r.bar is not None:
            r.bar.update(iteration - r.bar.n)
            r.bar.set_postfix_str(loss_text)
            if iteration >= r.total:
                r.bar.set_description(f"{r.name} final evaluation")
            return
        if r.first is None:  # the rate is measured from the first report (resumed trials do not start at 0)
            r.first, r.t0 = iteration, time.monotonic()
            eta = ""
        else:
            rate = (time.monotonic() - r.t0) / max(iteration - r.first, 1)
            eta = f", ETA {_duration(rate * (r.total - iteration))}" if iteration < r.total else ""
        end = "; final evaluation:" if iteration >= r.total else ""
        log.info(f"{r.name} iteration {iteration}/{r.total}" + (f", {loss_text}" if loss_text else "") + eta + end)

    def ended(self, i: int, text: str) -> None:
        r = self.running.pop(i, None)
        if r is not None and r.bar is not None:
            r.bar.close()
        self.line(f"{r.name if r else f'[trial {i + 1}/{self.n}]'} {text}")

    def close(self) -> None:
        for i in list(self.running):
            r = self.running.pop(i)
            if r.bar is not None:
                r.bar.close()


def _duration(seconds: float) -> str:
    return (
        f"{seconds:.0f} s"
        if seconds < 90
        else f"{seconds / 60:.0f} min"
        if seconds < 5400
        else f"{seconds / 3600:.1f} h"
    )
