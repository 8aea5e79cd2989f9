"""`multistep teacher`: its parser and its run (training: sweep/teacher_job.py; import: sweep/teacher_import.py)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

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
        return _import(args)
    if args.spec or args.name:
        raise ConfigError(f"{args.spec or '--name'}: only `multistep teacher import` takes a second file or --name")
    return _train(args)


def _import(args) -> int:
    from multistep.config import ConfigError
    from multistep.sweep import teacher_import
    from multistep.sweep.preflight import tracking_uri

    if not args.name:
        raise ConfigError("--name: required for `multistep teacher import` (the teacher's name in MLflow)")
    tc, experiment, steps = teacher_import.check_spec(args.spec)
    uri = tracking_uri(args.tracking_uri)
    if args.dry_run:
        print(f"{args.spec}: teacher {tc.teacher.kind} {tc.teacher.path} checked; nothing logged (--dry-run)")
        return 0
    rid = teacher_import.import_teacher(tc, args.name, experiment, steps, uri)
    print(f"in a sweep file:\n  teacher: {{kind: mlflow, run_id: {rid}}}")
    return 0


def _train(args) -> int:
    from multistep.config import ConfigError, load_teacher_file
    from multistep.data import data_kind
    from multistep.sweep.preflight import Storage, tracking_uri, verify_data

    cfg = load_teacher_file(args.file)
    net_cfg, n_params, captions = impl.check(cfg, args.file)
    if data_kind(cfg.data).files and not args.skip_data_check:
        verify_data(cfg.data, f"{args.file}: ")
    uri = tracking_uri(args.tracking_uri)  # before Ray or MLflow: a supported, writable or answering store
    if "://" in args.storage:
        raise ConfigError(f"--storage {args.storage}: multistep teacher writes its checkpoint to a local folder")
    store = Storage(args.storage)  # a probe write there
    storage = Path(store.uri)
    if args.dry_run:
        print(
            json.dumps(
                {
                    "file": args.file,
                    "tracking_uri": uri,
                    "storage": str(storage),
                    "net": net_cfg,
                    "parameters": n_params,
                    "captions": captions and len(captions["captions"]),
                    "config": cfg.model_dump(mode="json"),
                },
                indent=2,
            )
        )
        return 0
    out = impl.run_teacher(cfg, args.file, net_cfg, uri, storage, captions=captions)
    return 0 if out.get("status") == "FINISHED" else 1
