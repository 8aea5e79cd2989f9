"""`multistep teacher`: its parser and its run (the work is in sweep.teacher_job)."""

from __future__ import annotations

import argparse

from multistep.commands.common import add_run_options
from multistep.sweep import teacher_job as impl

HELP = """\
Train a diffusion teacher described by FILE (data, net, schedule, train, eval, resources) as a Ray
Train job, log it to MLflow (loss curve, DDIM FD-versus-steps curve, the checkpoint as an artifact)
and write the checkpoint under --storage. Prints the checkpoint path, the MLflow run id, and the
lines to paste into a sweep file. Exit codes: 0 trained, 1 training failed, 2 bad input."""


def add_parser(subparsers) -> argparse.ArgumentParser:
    s = subparsers.add_parser(
        "teacher",
        help="train a network teacher (Ray Train) and log it to MLflow",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    s.add_argument("file", help="teacher file, e.g. sweeps/teacher_digits.yaml")
    add_run_options(s, "folder for Ray Train state and the checkpoint (teachers/ beneath it)")
    return s


# -- validation (driver side, before anything starts) ----------------------------------------------


def run(args) -> int:
    return impl.cmd_teacher(args)
