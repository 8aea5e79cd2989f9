"""`multistep sample`: its parser and its run (the work is in commands/sampling.py)."""

from __future__ import annotations

import argparse

HELP = """\
Draw samples from a teacher or a distilled student, in this process (no Ray, no MLflow), and write them as
float32 .npy in the teacher's own sample space (e.g. [-1, 1] for a diffusers pipeline), unclipped, with the
same shape as the noise. SOURCE: a teacher YAML (a teacher: section, and data: where the shape is needed), a
diffusers folder, a teacher.pt of `multistep teacher`, or a trial's state.pt. Default sampler: ddim for a
teacher, MCM Algorithm 2 at its trained S for a student; a flow-map student (method flowmap) jumps on the uniform
grid at any --steps (sampler flowmap, its only one). A student of a text-to-image pipeline writes the images its
VAE decodes (--latents: the latents), conditioned on --prompts. Exit codes: 0 written, 2 bad input."""


def add_parser(subparsers) -> argparse.ArgumentParser:
    s = subparsers.add_parser(
        "sample",
        help="samples of a teacher or student to .npy",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    s.add_argument("source", help="teacher YAML, diffusers folder, teacher.pt or a trial's state.pt")
    s.add_argument("--steps", type=int, default=None, help="sampling steps (default: a student's trained S)")
    s.add_argument(
        "--sampler",
        choices=("ddim", "addim", "mcm", "cm", "flowmap"),
        default=None,
        help="ddim / addim (teachers), mcm / cm (students), flowmap (flow-map students)",
    )
    s.add_argument("--num", type=int, default=64, help="samples to draw when no --noise is given (default 64)")
    s.add_argument("--seed", type=int, default=0, help="seed of the drawn noise (and of the cm sampler's noise)")
    s.add_argument("--noise", default=None, help="NOISE.npy: the starting noise, unit variance, one row per sample")
    s.add_argument(
        "--labels",
        default=None,
        help="LABELS.npy: one class label per row (conditional sources); num_classes = no class",
    )
    s.add_argument(
        "--prompts",
        default=None,
        help="PROMPTS.txt: a student of caption data: one of its captions per line, cycled over the rows",
    )
    s.add_argument(
        "--latents",
        action="store_true",
        help="a student of a text-to-image pipeline: write its latents, not the images its VAE decodes",
    )
    s.add_argument("--out", required=True, help="OUT.npy: the samples (float32)")
    s.add_argument("--grid", default=None, help="GRID.png: an 8x8 grid of the first samples (images)")
    s.add_argument("--device", default="cpu", help="torch device, e.g. cuda (default cpu)")
    s.add_argument("--batch-size", type=int, default=256, help="samples per batch (default 256)")
    return s


def run(args) -> int:
    from multistep.config import ConfigError

    for flag, v in (("--steps", args.steps), ("--num", args.num), ("--batch-size", args.batch_size)):
        if v is not None and v < 1:
            raise ConfigError(f"{flag}: must be >= 1, got {v}")
    from multistep.commands import sampling

    return sampling.run(args)
