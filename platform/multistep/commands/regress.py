"""`multistep regress`: its parser and its run (the work is in sweep.regress)."""

from __future__ import annotations

import argparse

from multistep.commands.common import add_run_options
from multistep.regress import baseline as impl

HELP = """\
Run the regression sweep FILE (a sweep file with a `regression:` section of tolerances), or reuse a finished
sweep run of it (--run), and compare every (method, student_steps, metric) point with the baseline: the
sweep run promoted with --promote, or --baseline RUN_ID|PATH. Prints a table (baseline, current, difference,
tolerance, verdict) and writes a Markdown report, a PNG of baseline and current curves and a CSV, all logged
to an MLflow run of kind `regression`. Exit codes: 0 no regression, 1 a point regressed (named in the
output), 2 bad input or no baseline.

  multistep regress sweeps/regression.yaml                       # nightly: run the sweep, compare, exit 0/1
  multistep regress sweeps/regression.yaml --run RUN_ID          # compare a finished sweep run instead
  multistep regress --promote RUN_ID --reason "new sampler"      # make a sweep run the baseline of its name"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    s = subparsers.add_parser(
        "regress",
        help="compare a fixed sweep with its baseline; exit 1 when a curve got worse",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    s.add_argument(
        "file", nargs="?", help="regression sweep file, e.g. sweeps/regression.yaml (optional with --promote)"
    )
    s.add_argument(
        "--run", metavar="RUN_ID", help="compare this finished sweep run of FILE instead of running the sweep"
    )
    s.add_argument(
        "--baseline",
        metavar="RUN_ID|PATH",
        help="compare with this sweep run or results file (.parquet/.csv) instead of the promoted baseline",
    )
    s.add_argument(
        "--promote",
        metavar="RUN_ID",
        help="make this sweep run (or the sweep run a regression run checked) the baseline of its sweep name",
    )
    s.add_argument(
        "--reason", help="why the baseline moves (recorded on the run with who and when); needed by --promote"
    )
    add_run_options(s, "folder for Ray state, caches and the sweep's results")
    s.add_argument(
        "--out",
        default=None,
        help="folder for the report, plot and table (default <storage>/regress/reports/<regression run name>)",
    )
    return s


def run(args) -> int:
    from multistep.config import ConfigError, load_sweep
    from multistep.sweep.preflight import tracking_uri

    if args.promote:
        if not args.reason or not args.reason.strip():
            raise ConfigError("--promote: --reason TEXT is required (recorded on the run with who and when)")
        if args.run or args.baseline:
            raise ConfigError("--promote: cannot be combined with --run or --baseline (it only moves the baseline tag)")
    elif not args.file:
        raise ConfigError("FILE: a regression sweep file is required (or --promote RUN_ID --reason TEXT)")
    if "://" in args.storage:  # caches then live in ./ray_results/cache and would be reused, hiding regressions in them
        raise ConfigError(
            f"--storage {args.storage}: multistep regress needs a local folder (it runs each check with a fresh cache)"
        )
    plan = load_sweep(args.file) if args.file else None
    if plan is not None and not args.promote:
        impl.check_file(plan, args.file)
    uri = tracking_uri(args.tracking_uri)  # one resolution and check for every command
    from multistep.tracking import mlflow_layout as ml

    client = ml.client(uri)
    if args.promote:
        return impl.promote(client, args.promote, args.reason.strip(), plan.cfg.name if plan else None)
    return impl.regress(
        client, plan, uri, args.storage, args.baseline, args.run, args.out, getattr(args, "dry_run", False)
    )
