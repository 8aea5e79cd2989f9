"""Options shared by the sub-commands that start Ray work and log to MLflow (sweep, teacher, regress)."""

from __future__ import annotations

import argparse


def add_run_options(p: argparse.ArgumentParser, storage_help: str) -> None:
    p.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow tracking URI (default: sqlite:///<cwd>/mlflow.db; relative sqlite paths are made absolute)",
    )
    p.add_argument("--storage", default="./ray_results", help=f"{storage_help} (default ./ray_results)")
    p.add_argument("--dry-run", action="store_true", help="print the validated config; start nothing")


def say(*args) -> None:
    """The commands' progress printer. Tune pickles the sweep's callbacks, which hold `say`: the builtin print
    pickles by reference, and Ray swaps builtins.print for its tqdm-safe print once a worker's log line reaches
    the driver, after which the original no longer pickles. A module-level function always does."""
    print(*args, flush=True)
