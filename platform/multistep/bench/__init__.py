"""`multistep bench`: where the GPU hours go. Prints a table and writes JSON (docs/performance.md).

- training:   step time and img/s of a diffusion (teacher v-loss) step and of an MCD step (MCM with a
              network teacher) on the same UNet and batch; their ratio (FLOP ideal 5/3: the MCD step is a
              teacher forward, a no-grad reference forward and a forward+backward, the diffusion step only
              the last); FLOPs counted once per architecture (FlopCounterMode on a meta-device copy);
              TFLOP/s, MFU, peak memory; compile time reported apart (it is paid once per trial).
- sampling:   img/s of the S-step student sampler (MCM Algorithm 2) for S in 1, 2, 4, 8 and of the teacher
              at 512 aDDIM steps; speedup versus the goal 0.9 * 512 / S.
- evaluation: metrics.frechet_distance versus the scipy.linalg.sqrtm formula at d = 2048.
- data (--parts data): Parquet shards streamed as the trials stream them, with and without the reader thread,
              beside a stand-in accelerator step (a sleep: the host waits, the GIL is free); time the step
              waits for its batch.
- orchestration (--orchestration): a 4-trial sweep through run_sweep versus the same four loops in one
              plain process, with a per-trial breakdown of the difference (bench/orchestration.py).
- gpu_check (`benchmarks/gpu_check.sh`): every GPU figure in one command on a lent GPU machine (bench/gpu_check.py).
One module per part; heavy imports happen inside the functions, so `multistep --help` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from multistep.bench.data import bench_data
from multistep.bench.evaluation import bench_evaluation
from multistep.bench.report import table
from multistep.bench.sampling import bench_sampling
from multistep.bench.training import (
    SIZES,
    Setup,
    bench_training,
    default_peak_tflops,
    forward_flops_per_image,
    image_shape,
    machine,
    make_net,
)

__all__ = [
    "SIZES",
    "Setup",
    "add_parser",
    "bench_data",
    "bench_evaluation",
    "bench_sampling",
    "bench_training",
    "cmd_bench",
    "default_peak_tflops",
    "forward_flops_per_image",
    "image_shape",
    "machine",
    "make_net",
    "run",
    "table",
]

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
    s.add_argument("--size", choices=sorted(SIZES), default="cpu", help="network and batch preset (default cpu)")
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
        default="training,sampling,evaluation",
        help="comma-separated parts to run: training, sampling, evaluation, data, orchestration",
    )
    s.add_argument("--orchestration", action="store_true", help="also run the (slow, CPU) orchestration part")
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


def run(args) -> dict:
    from multistep.config import ConfigError

    for name in ("steps", "teacher_steps", "fd_dim", "batch", "sample_batch", "threads"):
        v = getattr(args, name)
        if v is not None and v < 1:
            raise ConfigError(f"--{name.replace('_', '-')}: must be at least 1, not {v}")
    if args.warmup < 0 or args.trial_seconds <= 0:
        raise ConfigError("--warmup must be >= 0 and --trial-seconds > 0")
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: CUDA is not available on this machine")
    parts = {p.strip() for p in args.parts.split(",") if p.strip()} | (
        {"orchestration"} if args.orchestration else set()
    )
    unknown = parts - {"training", "sampling", "evaluation", "data", "orchestration"}
    if unknown:
        raise ConfigError(f"--parts: unknown part(s) {', '.join(sorted(unknown))}")
    preset = SIZES[args.size]
    peak = args.peak_tflops or default_peak_tflops(device, args.precision)
    res = {
        "machine": machine(device),
        "config": {
            "size": args.size,
            "device": device,
            "precision": args.precision,
            "compile": args.compile,
            "channels_last": args.channels_last,
            "peak_tflops": peak,
            "steps": args.steps,
            "warmup": args.warmup,
        },
    }
    if parts & {"training", "sampling"}:
        threads = torch.get_num_threads()
        torch.set_num_threads(args.threads or threads)  # networks only: the evaluation part uses every core
        res["config"]["torch_threads"] = torch.get_num_threads()
        try:
            setup = Setup(args.size, device, args.precision, args.compile, args.channels_last)
            for note in setup.notes:  # e.g. compile disabled for want of a toolchain: figures are eager ones
                print(note, file=sys.stderr)
            res["config"]["notes"] = setup.notes
            if "training" in parts:
                res["training"] = bench_training(setup, args.batch or preset["batch"], args.warmup, args.steps, peak)
            if "sampling" in parts:
                res["sampling"] = bench_sampling(setup, args.sample_batch or preset["sample_batch"], args.teacher_steps)
        finally:
            torch.set_num_threads(threads)
    if "evaluation" in parts:
        res["evaluation"] = bench_evaluation(args.fd_dim)
    if "data" in parts:
        res["data"] = bench_data()
    if "orchestration" in parts:
        from multistep.bench.orchestration import bench_orchestration

        res["orchestration"] = bench_orchestration(args.trial_seconds, args.work_dir, args.runner)
    return res


def cmd_bench(args) -> int:
    res = run(args)
    print(table(res), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2))
        print(f"\nwrote {args.out}")
    return 0
