"""The commands' progress printer (the options they share are in commands/common.py)."""

from __future__ import annotations


def say(*args) -> None:
    """The commands' progress printer. Tune pickles the sweep's callbacks, which hold `say`: the builtin print
    pickles by reference, and Ray swaps builtins.print for its tqdm-safe print once a worker's log line reaches
    the driver, after which the original no longer pickles. A module-level function always does."""
    print(*args, flush=True)
