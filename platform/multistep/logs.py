"""The library's messages and progress go through `logging`, under the logger "multistep" (each module logs as
`multistep.<module>`). The command line shows them on standard output, one plain line each: `configure()`, called
once by `cli.main`. From a notebook: `multistep.logs.configure()`, or any logging setup of your own."""

from __future__ import annotations

import logging
import sys

ROOT = "multistep"


class StdoutLines(logging.Handler):
    """Each record as one line on the sys.stdout of the moment (a test's capture, a redirected stream)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            print(self.format(record), flush=True)
        except RuntimeError:  # "reentrant call": a line logged by a signal handler while a print was interrupted
            pass
        except Exception:
            self.handleError(record)


def _shown() -> bool:
    return any(isinstance(h, StdoutLines) for h in logging.getLogger(ROOT).handlers)


def configure(level: int = logging.INFO) -> None:
    """Messages of `level` and above from the library to standard output (idempotent)."""
    logging.getLogger(ROOT).setLevel(level)
    if not _shown():
        logging.getLogger(ROOT).addHandler(StdoutLines())


def on_terminal() -> bool:
    """The library's messages reach a terminal (configured, stdout a tty): where live progress lines belong."""
    return _shown() and sys.stdout.isatty()
