"""`multistep teacher`: its parser and its run (the work is in sweep.teacher_job)."""

from __future__ import annotations

import argparse

from multistep.commands.common import add_data_check_option, add_run_options
from multistep.sweep import teacher_job as impl

HELP = """\
Train a diffusion teacher described by FILE (data, net, schedule, train, eval, resources) as a Ray
Train job, log it to MLflow (loss curve, DDIM FD-versus-steps curve, the checkpoint as an artifact)
and write the checkpoint under --storage. Prints the checkpoint path, the MLflow run id, and the
lines to paste into a sweep file. Exit codes: 0 trained, 1 training failed, 2 bad input.

`multistep teacher import SPEC.yaml --name NAME` logs a teacher trained elsewhere instead (a diffusers
folder, a TorchScript file or a state dict; SPEC has its teacher: and data: sections, docs/teachers.md):
it is checked as a sweep would check it, its files and declaration become the run's artifacts, and its
DDIM curve (FD versus steps) is the sanity report. Sweeps then use teacher: {kind: mlflow, run_id: ...}."""


def add_parser(subparsers) -> argparse.ArgumentParser:
    s = subparsers.add_parser(
        "teacher",
        help="train a network teacher (Ray Train) and log it to MLflow",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    s.add_argument("file", help="teacher file, e.g. sweeps/teacher_digits.yaml; or `import`")
    s.add_argument("spec", nargs="?", help="with `import`: the teacher YAML to import (teacher: and data: sections)")
    s.add_argument(
        "--name", default=None, help="with `import`: the teacher's name in MLflow (tag multistep.teacher_name)"
    )
    add_run_options(s, "folder for Ray Train state and the checkpoint (teachers/ beneath it)")
    add_data_check_option(s)
    return s


# -- validation (driver side, before anything starts) ----------------------------------------------


def run(args) -> int:
    from multistep.config import ConfigError

    if args.file == "import":
        if not args.spec:
            raise ConfigError(
                "teacher import: give the teacher YAML to import (multistep teacher import SPEC.yaml --name NAME)"
            )
        from multistep.sweep import teacher_import

        return teacher_import.cmd_import(args)
    if args.spec or args.name:
        raise ConfigError(f"{args.spec or '--name'}: only `multistep teacher import` takes a second file or --name")
    return impl.cmd_teacher(args)
