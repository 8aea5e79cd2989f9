"""`multistep compare`: its parser and its run (tables from MLflow; the comparison is regress/side_by_side.py)."""

from __future__ import annotations

import argparse

HELP = """\
Several sweeps side by side: each RUN_OR_SWEEP is a sweep run id (a regression run stands for the sweep it
checked) or a sweep name (its latest FINISHED sweep run in the tracking store). Prints one row per (method,
steps) with each sweep's value of --metric (the best over its trials), and for every sweep after the first
its difference from the first and whether it exceeds their combined standard error (where the sweeps measured
one: eval.bootstrap, KID's subsets). --out DIR also writes compare.csv and compare.png (overlaid curves).
Use it for "this commit versus the baseline" outside the regression job. Exit codes: 0 compared, 2 bad input."""


def add_parser(subparsers) -> argparse.ArgumentParser:
    s = subparsers.add_parser(
        "compare",
        help="several sweeps side by side (table, overlaid curves)",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    s.add_argument("sweeps", nargs="+", metavar="RUN_OR_SWEEP", help="sweep run ids or sweep names (two or more)")
    s.add_argument("--metric", default=None, help="metric to compare (default: the first FD of the first table)")
    s.add_argument("--out", default=None, help="folder for compare.csv and compare.png (default: print only)")
    s.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default sqlite:///<cwd>/mlflow.db)")
    return s


def run(args) -> int:
    from multistep.config import ConfigError

    if len(args.sweeps) < 2:
        raise ConfigError("RUN_OR_SWEEP: give two or more sweeps to compare")
    from multistep.regress import side_by_side as sbs
    from multistep.regress.baseline import read_run_table, sweep_run_or_latest
    from multistep.sweep.preflight import tracking_uri
    from multistep.tracking import mlflow_layout as ml

    client = ml.client(tracking_uri(args.tracking_uri))
    tables = {}
    for arg in args.sweeps:
        r = sweep_run_or_latest(client, arg)
        label = f"{r.data.tags.get('multistep.sweep_id', r.info.run_id[:8])}"
        tables[label if label not in tables else f"{label}#{len(tables)}"] = read_run_table(client, r, "RUN_OR_SWEEP")
    first = next(iter(tables.values()))
    metric = args.metric or sbs.default_metric(first)
    if not any(row["metric"] == metric for rows in tables.values() for row in rows):
        raise ConfigError(
            f"--metric {metric}: in none of the tables (they have {sorted({r['metric'] for r in first})})"
        )
    rows = sbs.side_by_side(tables, metric)
    print(f"{metric}:\n" + sbs.format_table(rows, list(tables)))
    if args.out:
        from pathlib import Path

        from multistep.sweep.results import write_csv

        out = Path(args.out)
        write_csv(rows, out / "compare.csv")
        sbs.plot(tables, metric, out / "compare.png")
        print(f"wrote {out / 'compare.csv'}, {out / 'compare.png'}")
    return 0
