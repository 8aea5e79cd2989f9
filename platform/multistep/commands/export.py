"""`multistep export`: its parser and its run (the work is in export.py)."""

from __future__ import annotations

import argparse

from multistep.export import FORMATS

HELP = """\
Write a distilled student (a trial's state.pt) as files other code loads without this platform's trial config:
  safetensors  model.safetensors + multistep.json (network, denoiser, schedule, S, time grid, labels, version)
  torchscript  sampler.pt: a scripted module, sample(noise[, labels]) -> samples, S baked in
  diffusers    a DDIMPipeline folder for a student of a diffusers teacher (diffusers' from_pretrained loads it); of
               a text-to-image pipeline's student, a StableDiffusionPipeline folder (its UNet, the teacher's VAE, text
               encoder and tokenizer, a trailing-DDIM scheduler at S steps); --lora-only: the adapters alone
LoRA students are exported with their adapters merged into the teacher's weights (or alone: --lora-only).
Each export is reloaded and its samples checked against the platform's from the same noise before success.
--register NAME logs it to MLflow's model registry (a new version per export, linked to the trial run).
Exit codes: 0 written, 1 the reloaded export disagreed, 2 bad input. See docs/export.md."""


def add_parser(subparsers) -> argparse.ArgumentParser:
    s = subparsers.add_parser(
        "export",
        help="a student as safetensors, TorchScript or diffusers files",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    s.add_argument("state", help="a trial's state.pt (e.g. ray_results/<sweep>/trial-000/checkpoint_000002/state.pt)")
    s.add_argument("--out", required=True, help="output folder (must not exist or be empty)")
    s.add_argument("--format", choices=FORMATS, default="safetensors", help="default safetensors")
    s.add_argument(
        "--lora-only",
        action="store_true",
        help="a LoRA student of a text-to-image pipeline: write only its adapters (pytorch_lora_weights.safetensors, "
        "for pipe.load_lora_weights) and the scheduler, not a whole pipeline",
    )
    s.add_argument(
        "--register", default=None, metavar="NAME", help="register the export as MLflow model NAME (new version)"
    )
    s.add_argument(
        "--tracking-uri", default=None, help="MLflow tracking URI for --register (default sqlite:///<cwd>/mlflow.db)"
    )
    return s


def run(args) -> int:
    from multistep import export

    return export.export(args.state, args.out, args.format, args.lora_only, args.register, args.tracking_uri)
