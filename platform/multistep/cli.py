"""`multistep` command line. Heavy imports (Ray, MLflow, torch) happen only after input is validated,
so bad input fails in well under a second with exit code 2 and one line naming the problem."""

from __future__ import annotations

import argparse
import json
import sys

from multistep import bench, eval_cmd
from multistep.cli_common import add_run_options
from multistep.data import convert as data_convert
from multistep.sweep import regress, submit, teacher_job

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="multistep",
        description="Distil diffusion models into few-step generators and compare methods with Ray-orchestrated "
        "sweeps tracked in MLflow. Exit codes: 0 success, 1 a trial failed, 2 bad input, 130 interrupted.",
    )
    p.add_argument("--debug", action="store_true", help="show tracebacks for user errors too")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser(
        "sweep",
        help="run a sweep file (YAML) on Ray and log it to MLflow",
        description="Validate a sweep file, expand its search space into trials, run each trial as a "
        "Ray Tune trial (one worker: in the trial's own process; several: a Ray Train worker "
        "group), and log every trial as a nested MLflow run. Prints "
        "a metric-versus-steps table at the end and writes results.parquet/.csv and a plot "
        "under the sweep's output folder.",
    )
    s.add_argument("file", help="sweep file, e.g. sweeps/quickstart.yaml")
    add_run_options(
        s,
        "folder for Ray Tune/Train state, checkpoints, caches and results, or a URI pyarrow understands "
        "(s3://, gs://: shared storage for multi-node clusters; caches and results then also in ./ray_results)",
    )
    s.add_argument(
        "--resume",
        action="store_true",
        help="continue the latest sweep of this name (same MLflow sweep run; finished trials are not re-run, "
        "unfinished ones resume from their checkpoints)",
    )
    submit.add_parser(sub)
    teacher_job.add_parser(sub)
    data_convert.add_parser(sub)
    bench.add_parser(sub)
    regress.add_parser(sub)
    eval_cmd.add_parser(sub)
    return p


def _fail(msg: str) -> int:
    print(f"multistep: error: {msg}", file=sys.stderr)
    return EXIT_BAD_INPUT


def cmd_sweep(args) -> int:
    from multistep.config import load_sweep
    from multistep.sweep.preflight import preflight

    plan = load_sweep(args.file)
    uri, storage = preflight(plan, args.tracking_uri, args.storage, args.resume, args.dry_run)  # before Ray or MLflow
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
            print(f"  {i + 1:>3}. " + (", ".join(f"{k}={v}" for k, v in t["overrides"].items()) or "(base config)"))
        print("\npre-flight passed: tracking store, storage, teacher and data checked; nothing started")
        return EXIT_OK
    from multistep.sweep.driver import run_sweep

    return run_sweep(plan, uri, storage, resume=args.resume)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from multistep.config import ConfigError

    try:
        return {
            "sweep": cmd_sweep,
            "submit": submit.cmd_submit,
            "data": data_convert.cmd_data_convert,
            "teacher": teacher_job.cmd_teacher,
            "bench": bench.cmd_bench,
            "regress": regress.cmd_regress,
            "eval": eval_cmd.cmd_eval,
        }[args.command](args)
    except ConfigError as e:
        if args.debug:
            raise
        return _fail(str(e))
    except KeyboardInterrupt:
        print("multistep: interrupted", file=sys.stderr)
        return 130
    except OSError as e:  # a full disk, a lost mount, a permission change while running: one line, exit 1
        if args.debug:
            raise
        where = f"{e.filename}: " if e.filename else ""
        print(f"multistep: error: {where}{e.strerror or e}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
