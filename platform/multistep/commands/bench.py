"""`multistep bench`: its parser and its run (the work is in bench)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from multistep import bench as impl

HELP = """\
Measure training steps (diffusion vs MCD), sampling (S-step student vs 512-step aDDIM teacher), the
Frechet distance versus scipy's sqrtm, and optionally the sweep orchestration overhead; print a table
and write JSON. GPU sizes (cifar, imagenet64) are meant for a GPU; they run on a CPU, slowly.
  multistep bench --size cpu --out bench.json
  multistep bench --size imagenet64 --precision bf16 --compile --channels-last --out bench.json
  multistep bench --size cpu --parts orchestration --orchestration"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    s = subparsers.add_parser(
        "bench",
        help="performance benchmark: training, sampling, evaluation, orchestration",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    s.add_argument("--size", choices=sorted(impl.SIZES), default="cpu", help="network and batch preset (default cpu)")
    s.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    s.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's; use 1 on a shared machine, where a descheduled OpenMP thread stalls every op)",
    )
    s.add_argument("--batch", type=int, default=None, help="training batch (default: the size's)")
    s.add_argument("--sample-batch", type=int, default=None, help="sampling batch (default: the size's)")
    s.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="autocast of the network forward")
    s.add_argument("--compile", action="store_true", help="torch.compile the networks (compile time reported apart)")
    s.add_argument("--channels-last", action="store_true", help="channels_last weights and inputs")
    s.add_argument("--steps", type=int, default=10, help="timed training steps per kind (default 10)")
    s.add_argument("--warmup", type=int, default=2, help="untimed warm-up steps, compile included (default 2)")
    s.add_argument("--teacher-steps", type=int, default=512, help="aDDIM steps of the teacher sampler (default 512)")
    s.add_argument("--fd-dim", type=int, default=2048, help="feature dimension of the Frechet-distance comparison")
    s.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="peak TFLOP/s for MFU (default: the GPU's dense bf16 peak, e.g. 989 on H100/H200; on CPU MFU is not reported)",
    )
    s.add_argument(
        "--parts",
        default="training,sampling,teacher,evaluation",
        help="comma-separated parts to run: training, sampling, teacher, evaluation, memory, data, orchestration",
    )
    s.add_argument("--orchestration", action="store_true", help="also run the (slow, CPU) orchestration part")
    s.add_argument(
        "--memory-samples", type=int, default=50_000, help="memory: samples of the streamed evaluation (default 50000)"
    )
    s.add_argument(
        "--trial-seconds", type=float, default=20.0, help="orchestration: target loop time per trial (default 20)"
    )
    s.add_argument(
        "--runner",
        choices=["tune", "train"],
        default="tune",
        help="orchestration: how trials run (resources.runner): tune = in the trial's process, train = TorchTrainer",
    )
    s.add_argument("--work-dir", default=None, help="orchestration: folder for the sweep file, MLflow and Ray state")
    s.add_argument("--out", default="bench.json", help="JSON output file (default bench.json)")
    return s


def run(args) -> int:
    from dataclasses import fields

    parts = {p.strip() for p in args.parts.split(",") if p.strip()} | (
        {"orchestration"} if args.orchestration else set()
    )
    given = {f.name: getattr(args, f.name) for f in fields(impl.BenchOptions) if f.name != "parts"}
    res = impl.run(impl.BenchOptions(parts=frozenset(parts), **given))
    print(impl.table(res), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2))
        print(f"\nwrote {args.out}")
    return 0
