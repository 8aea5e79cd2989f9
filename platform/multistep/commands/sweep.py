"""`multistep sweep FILE`: validate, pre-flight, then run the sweep (sweep/driver.py)."""

from __future__ import annotations

import json

from multistep.commands.common import add_data_check_option, add_run_options


def add_parser(sub):
    s = sub.add_parser(
        "sweep",
        help="run a sweep file (YAML) on Ray and log it to MLflow",
        description="Validate a sweep file, expand its search space into trials, run each trial as a "
        "Ray Tune trial (one worker: in the trial's own process; several: a Ray Train worker "
        "group), and log every trial as a nested MLflow run. Prints "
        "a metric-versus-steps table at the end and writes results.parquet/.csv and a plot "
        "under the sweep's output folder. Every key of a sweep file, its default and meaning: "
        "`multistep sweep --options` (the same as docs/config.md).",
    )
    s.add_argument("file", nargs="?", help="sweep file, e.g. sweeps/quickstart.yaml")
    s.add_argument(
        "--options", action="store_true", help="print every sweep-file key with its type, default and meaning; exit"
    )
    add_run_options(
        s,
        "folder for Ray Tune/Train state, checkpoints, caches and results, or a URI pyarrow understands "
        "(s3://, gs://: shared storage for multi-node clusters; caches and results then also in ./ray_results)",
    )
    add_data_check_option(s)
    s.add_argument(
        "--resume",
        action="store_true",
        help="continue the latest sweep of this name (same MLflow sweep run; finished trials are not re-run, "
        "unfinished ones resume from their checkpoints)",
    )
    return s


def run(args) -> int:
    from multistep.config import ConfigError, load_sweep
    from multistep.sweep.preflight import preflight

    if args.options:
        from multistep.config.reference import reference

        print(reference(), end="")
        return 0
    if not args.file:
        raise ConfigError("FILE: a sweep file is required, e.g. multistep sweep sweeps/quickstart.yaml")
    plan = load_sweep(args.file)
    # before Ray or MLflow
    uri, storage = preflight(plan, args.tracking_uri, args.storage, args.resume, not args.skip_data_check)
    if args.dry_run:
        print(
            json.dumps(
                {
                    "file": args.file,
                    "tracking_uri": uri,
                    "storage": storage,
                    "config": plan.cfg.model_dump(mode="json"),
                },
                indent=2,
            )
        )
        print(f"\n{len(plan.trials)} trial(s):")
        for i, t in enumerate(plan.trials):
            print(f"  {i + 1:>3}. " + (", ".join(f"{k}={v}" for k, v in t.overrides.items()) or "(base config)"))
        print("\npre-flight passed: tracking store, storage, teacher and data checked; nothing started")
        return 0
    from multistep.sweep.driver import run_sweep

    return run_sweep(plan, uri, storage, resume=args.resume)
