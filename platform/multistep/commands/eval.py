"""`multistep eval`: its parser and its run (the work is in commands/evaluation.py)."""

from __future__ import annotations

import argparse

from multistep.commands import evaluation as impl

HELP = """\
Evaluate a teacher checkpoint (teacher.pt from `multistep teacher`) or a student checkpoint (state.pt, or
the Ray checkpoint folder holding it, from a sweep trial) at several sampling step counts on fixed noise.
Prints a table and writes results.parquet/.csv (the sweep's columns), metric_vs_steps.png and eval.json
(checkpoint hash, samples, seed) to --out. Metric names carry the sample count (fd_pixel_1k, swd_1k, ...).

  multistep eval ray_results/teachers/digits/teacher.pt --steps 1,2,4,8 --grid
  multistep eval ray_results/<sweep_id>/trial-001/checkpoint_000002 --config sweeps/quickstart.yaml

Students are sampled at their own student_steps; an MCM student is also sampled at each --steps it was
not trained for (rows <label>_S<S>). --reference REF.npz compares with reference statistics (a FID comparable
with published ones needs the Inception detector, 50,000 samples and the dataset's standard statistics:
docs/evaluation.md); --make-reference DATA --out REF.npz writes such statistics from Parquet shards.
Exit codes: 0 evaluated, 2 bad input."""


def add_parser(subparsers) -> argparse.ArgumentParser:
    s = subparsers.add_parser(
        "eval",
        help="metric-versus-steps table, plot and sample grids of one checkpoint",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    s.add_argument("checkpoint", nargs="?", help="teacher.pt, or a trial's state.pt / Ray checkpoint folder")
    s.add_argument(
        "--steps",
        default=None,
        help="sampling step counts, e.g. 1,2,4,8 (teachers: default 1,2,4,8; MCM students: extra points)",
    )
    s.add_argument(
        "--samples", type=int, default=None, help="samples per point (default: the trial's eval.samples; teachers 1000)"
    )
    s.add_argument(
        "--seed",
        type=int,
        default=None,
        help="seed of the data sample and noise (default: the trial's eval.seed; teachers 1234)",
    )
    s.add_argument(
        "--config", default=None, help="student checkpoints: the trial config or sweep file (YAML) it was trained with"
    )
    s.add_argument(
        "--trial",
        type=int,
        default=None,
        help="with a sweep file as --config: the trial index (default: from the checkpoint's trial-NNN folder)",
    )
    s.add_argument(
        "--extractor",
        choices=["auto", "identity", "pixel", "classifier", "inception"],
        default=None,
        help="features of FD and KID (default: the trial's eval.extractor; teachers auto): auto = identity for "
        "mixtures, pixel for images; classifier = a small MLP trained on the labelled data (cached); "
        "inception = the FID detector given by --inception (metrics fid_* / kid_*)",
    )
    s.add_argument(
        "--inception",
        default=None,
        metavar="PATH",
        help="local TorchScript FID detector (inception-2015-12-05.pt); implies --extractor inception",
    )
    s.add_argument(
        "--with-teacher",
        action="store_true",
        help="students: also the trial teacher's DDIM/aDDIM curve at the same steps",
    )
    s.add_argument(
        "--reference",
        default=None,
        metavar="REF.npz",
        help="reference statistics (mu, sigma[, features]; EDM fid.py / pytorch-fid / clean-fid .npz): FD against them",
    )
    s.add_argument(
        "--make-reference",
        default=None,
        metavar="DATA",
        help="write reference statistics of Parquet shards DATA in the --extractor's features to --out REF.npz",
    )
    s.add_argument("--features", action="store_true", help="with --make-reference: also keep the features (for KID)")
    s.add_argument("--out", default=None, help="output folder (default ./eval-<timestamp>); --make-reference: REF.npz")
    s.add_argument(
        "--grid", action="store_true", help="also an 8x8 sample grid PNG per method and step count (image data)"
    )
    return s


def run(args) -> int:
    return impl.cmd_eval(args)
