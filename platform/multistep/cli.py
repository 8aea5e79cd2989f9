"""`multistep` command line: assembles one parser per command (multistep/commands/) and maps errors to exit codes.

Heavy imports (Ray, MLflow, torch) happen only inside a command's run, after its input is validated, so bad input
fails in well under a second with exit code 2 and one line naming the problem.
"""

from __future__ import annotations

import argparse
import sys

from multistep.commands import bench, claims, compare, data, export, regress, sample, submit, sweep, teacher
from multistep.commands import eval as eval_

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2
COMMANDS = (
    sweep,
    submit,
    teacher,
    data,
    bench,
    regress,
    compare,
    claims,
    eval_,
    sample,
    export,
)  # each: add_parser(subparsers), run(args) -> exit code


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="multistep",
        description="Distil diffusion models into few-step generators and compare methods with Ray-orchestrated "
        "sweeps tracked in MLflow. Exit codes: 0 success, 1 a trial failed, 2 bad input, 130 interrupted.",
    )
    p.add_argument("--debug", action="store_true", help="show tracebacks for user errors too")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub).set_defaults(handler=command.run)  # not `run`: regress has a --run option
    return p


def _fail(msg: str) -> int:
    print(f"multistep: error: {msg}", file=sys.stderr)
    return EXIT_BAD_INPUT


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from multistep.config import ConfigError
    from multistep.logs import configure

    configure()  # the library's messages and progress (logging) as plain lines on stdout

    try:
        return args.handler(args)
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
