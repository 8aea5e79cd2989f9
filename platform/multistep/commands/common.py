"""What several commands share: the options of the commands that start Ray work and log to MLflow (sweep, teacher,
regress). Their tracking URI is resolved and checked in one place, sweep/preflight.py `tracking_uri`."""

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


def add_data_check_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--skip-data-check",
        action="store_true",
        help="do not read every byte of Parquet data before starting (by default each shard is checked against the "
        "manifest.json `data convert` wrote, or decoded whole; the time it took is printed)",
    )
