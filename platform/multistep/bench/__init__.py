"""`multistep bench`: where the GPU hours go. Prints a table and writes JSON (docs/performance.md).

- training:   step time and img/s of a diffusion (teacher v-loss) step and of an MCD step (MCM with a
              network teacher) on the same UNet and batch; their ratio (FLOP ideal 5/3: the MCD step is a
              teacher forward, a no-grad reference forward and a forward+backward, the diffusion step only
              the last); FLOPs counted once per architecture (FlopCounterMode on a meta-device copy);
              TFLOP/s, MFU, peak memory; compile time reported apart (it is paid once per trial).
- sampling:   img/s of the S-step student sampler (MCM Algorithm 2) for S in 1, 2, 4, 8 and of the teacher
              at 512 aDDIM steps; speedup versus the goal 0.9 * 512 / S.
- teacher:    forward of a network through the adapter that makes it an imported teacher versus the bare network,
              same batch (bench/teacher.py; goal <= 1.05).
- evaluation: metrics.frechet_distance versus the scipy.linalg.sqrtm formula at d = 2048.
- memory (--parts memory): peak host memory and wall time of a --memory-samples evaluation of 3x64x64 images in
              2,048-d features, streamed, against the in-memory path at 5k and 10k samples (bench/memory.py).
- data (--parts data): Parquet shards streamed as the trials stream them, with and without the reader thread,
              beside a stand-in accelerator step (a sleep: the host waits, the GIL is free); time the step
              waits for its batch.
- orchestration (--orchestration): a 4-trial sweep through run_sweep versus the same four loops in one
              plain process, with a per-trial breakdown of the difference (bench/orchestration.py).
- gpu_check (`benchmarks/gpu_check.sh`): every GPU figure in one command on a lent GPU machine (bench/gpu_check.py).
One module per part; heavy imports happen inside the functions, so `multistep --help` stays fast.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from multistep.bench.data import bench_data
from multistep.bench.evaluation import bench_evaluation
from multistep.bench.report import table
from multistep.bench.sampling import bench_sampling
from multistep.bench.teacher import bench_teacher
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
    "bench_data",
    "bench_evaluation",
    "bench_sampling",
    "bench_teacher",
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
    unknown = parts - {"training", "sampling", "teacher", "evaluation", "memory", "data", "orchestration"}
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
    if parts & {"training", "sampling", "teacher"}:
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
            if "teacher" in parts:
                res["teacher"] = bench_teacher(setup, args.sample_batch or preset["sample_batch"])
        finally:
            torch.set_num_threads(threads)
    if "evaluation" in parts:
        res["evaluation"] = bench_evaluation(args.fd_dim)
    if "memory" in parts:
        from multistep.bench.memory import bench_memory

        res["memory"] = bench_memory(args.memory_samples)
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
