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

import logging
from dataclasses import dataclass

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

log = logging.getLogger(__name__)

__all__ = [
    "SIZES",
    "Setup",
    "bench_data",
    "bench_evaluation",
    "bench_sampling",
    "bench_teacher",
    "bench_training",
    "BenchOptions",
    "PARTS",
    "default_peak_tflops",
    "forward_flops_per_image",
    "image_shape",
    "machine",
    "make_net",
    "run",
    "table",
]


PARTS = ("training", "sampling", "teacher", "evaluation", "memory", "data", "orchestration")


@dataclass(frozen=True)
class BenchOptions:
    """What to measure and how (the flags of `multistep bench`, which declares their defaults)."""

    parts: frozenset[str]  # of PARTS
    size: str  # a SIZES preset: network and batches
    device: str | None  # None: cuda if available, else cpu
    precision: str  # fp32 | bf16 (autocast of the network forward)
    compile: bool
    channels_last: bool
    peak_tflops: float | None  # None: the device's known peak (MFU)
    steps: int  # timed training steps per kind
    warmup: int  # untimed steps first (compile included)
    batch: int | None  # training batch; None: the size's
    sample_batch: int | None  # sampling batch; None: the size's
    teacher_steps: int  # aDDIM steps of the teacher sampler
    threads: int | None  # torch threads for the network parts; None: as set
    fd_dim: int  # feature dimension of the Frechet-distance comparison
    memory_samples: int  # the memory part's streamed evaluation
    trial_seconds: float  # the orchestration part's trial length
    work_dir: str | None  # the orchestration part's folder
    runner: str  # the orchestration part's resources.runner


def run(o: BenchOptions) -> dict:
    """The chosen parts' figures, with the machine and the settings (the JSON `multistep bench` writes)."""
    from multistep.config import ConfigError

    for name in ("steps", "teacher_steps", "fd_dim", "batch", "sample_batch", "threads"):
        v = getattr(o, name)
        if v is not None and v < 1:
            raise ConfigError(f"--{name.replace('_', '-')}: must be at least 1, not {v}")
    if o.warmup < 0 or o.trial_seconds <= 0:
        raise ConfigError("--warmup must be >= 0 and --trial-seconds > 0")
    if unknown := set(o.parts) - set(PARTS):
        raise ConfigError(f"--parts: unknown part(s) {', '.join(sorted(unknown))}")
    import torch

    device = o.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: CUDA is not available on this machine")
    preset, parts = SIZES[o.size], o.parts
    peak = o.peak_tflops or default_peak_tflops(device, o.precision)
    res = {
        "machine": machine(device),
        "config": {
            "size": o.size,
            "device": device,
            "precision": o.precision,
            "compile": o.compile,
            "channels_last": o.channels_last,
            "peak_tflops": peak,
            "steps": o.steps,
            "warmup": o.warmup,
        },
    }
    if parts & {"training", "sampling", "teacher"}:
        threads = torch.get_num_threads()
        torch.set_num_threads(o.threads or threads)  # networks only: the evaluation part uses every core
        res["config"]["torch_threads"] = torch.get_num_threads()
        try:
            setup = Setup(o.size, device, o.precision, o.compile, o.channels_last)
            for note in setup.notes:  # e.g. compile disabled for want of a toolchain: figures are eager ones
                log.warning(note)
            res["config"]["notes"] = setup.notes
            if "training" in parts:
                res["training"] = bench_training(setup, o.batch or preset["batch"], o.warmup, o.steps, peak)
            if "sampling" in parts:
                res["sampling"] = bench_sampling(setup, o.sample_batch or preset["sample_batch"], o.teacher_steps)
            if "teacher" in parts:
                res["teacher"] = bench_teacher(setup, o.sample_batch or preset["sample_batch"])
        finally:
            torch.set_num_threads(threads)
    if "evaluation" in parts:
        res["evaluation"] = bench_evaluation(o.fd_dim)
    if "memory" in parts:
        from multistep.bench.memory import bench_memory

        res["memory"] = bench_memory(o.memory_samples)
    if "data" in parts:
        res["data"] = bench_data()
    if "orchestration" in parts:
        from multistep.bench.orchestration import bench_orchestration

        res["orchestration"] = bench_orchestration(o.trial_seconds, o.work_dir, o.runner)
    return res
