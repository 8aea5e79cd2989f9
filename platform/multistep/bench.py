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
              plain process, with a per-trial breakdown of the difference (multistep/bench_orchestration.py).
Heavy imports happen inside the functions, so `multistep --help` stays fast.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

GOAL_MCD_RATIO = 1.75          # MCD step / diffusion step (issue 9)
GOAL_MFU = 0.35                # 64x64 UNet, bf16 + compile on an H100
GOAL_FD_SPEEDUP = 10.0         # frechet_distance versus sqrtm at d = 2048
GOAL_FD_AGREEMENT = 1e-6       # relative
SAMPLER_STEPS = (1, 2, 4, 8)

# UNet sizes: cpu = a few-thousand-parameter 8x8 net; cifar = DDPM's 35.7M CIFAR-10 UNet; imagenet64 = ADM/EDM's
# ImageNet-64 layout (192 channels, 1-2-3-4, 3 blocks, attention at 32/16/8; 265M parameters).
SIZES = {
    "cpu": {"net": dict(in_ch=1, base_ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), resolution=8),
            "batch": 16, "sample_batch": 64},
    "cifar": {"net": dict(in_ch=3, base_ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,),
                          resolution=32, dropout=0.1), "batch": 128, "sample_batch": 256},
    "imagenet64": {"net": dict(in_ch=3, base_ch=192, ch_mult=(1, 2, 3, 4), num_res_blocks=3, attn_resolutions=(32, 16, 8),
                               resolution=64), "batch": 128, "sample_batch": 128},
}

HELP = """\
Measure training steps (diffusion vs MCD), sampling (S-step student vs 512-step aDDIM teacher), the
Frechet distance versus scipy's sqrtm, and optionally the sweep orchestration overhead; print a table
and write JSON. GPU sizes (cifar, imagenet64) are meant for a GPU; they run on a CPU, slowly.
  multistep bench --size cpu --out bench.json
  multistep bench --size imagenet64 --precision bf16 --compile --channels-last --out bench.json
  multistep bench --size cpu --parts orchestration --orchestration"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    s = subparsers.add_parser("bench", help="performance benchmark: training, sampling, evaluation, orchestration",
                              description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("--size", choices=sorted(SIZES), default="cpu", help="network and batch preset (default cpu)")
    s.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    s.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's; use 1 on a shared machine, where a descheduled OpenMP thread stalls every op)")
    s.add_argument("--batch", type=int, default=None, help="training batch (default: the size's)")
    s.add_argument("--sample-batch", type=int, default=None, help="sampling batch (default: the size's)")
    s.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="autocast of the network forward")
    s.add_argument("--compile", action="store_true", help="torch.compile the networks (compile time reported apart)")
    s.add_argument("--channels-last", action="store_true", help="channels_last weights and inputs")
    s.add_argument("--steps", type=int, default=10, help="timed training steps per kind (default 10)")
    s.add_argument("--warmup", type=int, default=2, help="untimed warm-up steps, compile included (default 2)")
    s.add_argument("--teacher-steps", type=int, default=512, help="aDDIM steps of the teacher sampler (default 512)")
    s.add_argument("--fd-dim", type=int, default=2048, help="feature dimension of the Frechet-distance comparison")
    s.add_argument("--peak-tflops", type=float, default=None,
                   help="peak TFLOP/s for MFU (default: 989 on an H100 with bf16, else MFU is not reported)")
    s.add_argument("--parts", default="training,sampling,evaluation",
                   help="comma-separated parts to run: training, sampling, evaluation, data, orchestration")
    s.add_argument("--orchestration", action="store_true", help="also run the (slow, CPU) orchestration part")
    s.add_argument("--trial-seconds", type=float, default=20.0, help="orchestration: target loop time per trial (default 20)")
    s.add_argument("--runner", choices=["tune", "train"], default="tune",
                   help="orchestration: how trials run (resources.runner): tune = in the trial's process, train = TorchTrainer")
    s.add_argument("--work-dir", default=None, help="orchestration: folder for the sweep file, MLflow and Ray state")
    s.add_argument("--out", default="bench.json", help="JSON output file (default bench.json)")
    return s


# -- shared ------------------------------------------------------------------------------------------
def machine(device) -> dict:
    import platform

    import torch

    info = {"device": str(device), "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "python": platform.python_version()}
    if torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    else:
        try:
            info["cpu"] = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
        except (OSError, StopIteration):
            pass
    return info


def default_peak_tflops(device, precision: str) -> float | None:
    import torch

    if torch.device(device).type == "cuda" and "H100" in torch.cuda.get_device_name(device) and precision == "bf16":
        return 989.0                         # H100 SXM dense bf16 tensor-core peak
    return None


def make_net(size: str, device="cpu"):
    from multistep.nets.unet import UNet

    return UNet(**SIZES[size]["net"]).to(device)


def image_shape(size: str) -> tuple[int, int, int]:
    n = SIZES[size]["net"]
    return (n["in_ch"], n["resolution"], n["resolution"])


def forward_flops_per_image(size: str) -> int:
    """FLOPs of one network forward per image, counted once per architecture on a meta-device copy (free)."""
    import torch

    from multistep.train.perf import flops_per_call

    with torch.device("meta"):
        net = make_net(size, "meta")
        return flops_per_call(net, torch.empty((1, *image_shape(size))), torch.empty(1))


def timed(fn, device, warmup: int, steps: int, blocks: int = 5) -> tuple[float, float]:
    """(seconds of the warm-up calls, seconds per timed call). The timed calls run in up to `blocks` blocks,
    the device synchronised only at block ends; the median block mean is robust to a busy shared machine."""

    from multistep.train.perf import synchronize

    synchronize(device)
    t0 = time.perf_counter()
    for _ in range(warmup):
        fn()
    synchronize(device)
    warm = time.perf_counter() - t0
    sizes = [steps // blocks + (i < steps % blocks) for i in range(min(blocks, steps))]
    means = []
    for n in sizes:
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        synchronize(device)
        means.append((time.perf_counter() - t0) / n)
    return warm, statistics.median(means) if means else float("nan")


class Setup:
    """Student, frozen teacher (same architecture) and the MCM method, with the fast paths switched on."""

    def __init__(self, size: str, device, precision="fp32", compile=False, channels_last=False, seed=0):
        import copy

        import torch

        from multistep.diffusion.schedules import make_schedule
        from multistep.methods.mcm import MCM
        from multistep.nets.mlp import VDenoiser
        from multistep.train.loop import TrainState
        from multistep.train.perf import InferenceTeacher, apply_fast_paths, make_adam

        torch.manual_seed(seed)
        self.size, self.device, self.sched = size, device, make_schedule("cosine")
        net = make_net(size, device)
        tnet = copy.deepcopy(net).requires_grad_(False).eval()     # the teacher: a trained copy in real use
        self.student, teacher = VDenoiser(net, self.sched), VDenoiser(tnet, self.sched)
        self.notes = apply_fast_paths([self.student, teacher], device, precision, channels_last, compile)   # as sweeps do
        self.teacher = InferenceTeacher(teacher)
        ema = copy.deepcopy(net).requires_grad_(False)              # eval EMA: the student's parameter order and layout
        self.method = MCM(self.sched, student_steps=4, teacher=self.teacher, anneal="constant", anneal_params={"n": 256})
        opt = make_adam(self.student.parameters(), 2e-4, device)
        self.state = TrainState(self.student, ema, opt, gen=torch.Generator().manual_seed(seed))

    def batch(self, n: int):
        import torch

        g = torch.Generator().manual_seed(1)
        return (torch.rand((n, *image_shape(self.size)), generator=g) * 2 - 1).to(self.device)

    def step(self, kind: str, x) -> None:
        """One optimizer step of the training loop (loss, backward, grad clip, Adam, eval EMA); no host sync."""
        import torch

        from multistep.diffusion.loss import v_loss
        from multistep.train.loop import ema_update

        st = self.state
        if kind == "diffusion":
            loss = v_loss(self.student.v, self.sched, x, st.gen)   # the network under the same fast paths
        else:
            loss, _ = self.method.loss(self.student, x, 0, 1000, st.gen)
        st.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.student.parameters(), 1.0)
        st.opt.step()
        ema_update(st.ema, self.student, 0.999)


# -- parts ---------------------------------------------------------------------------------------------
def bench_training(setup: Setup, batch: int, warmup: int, steps: int, peak_tflops: float | None) -> dict:
    from multistep.train.perf import peak_memory, reset_peak_memory

    f_img = forward_flops_per_image(setup.size)
    x = setup.batch(batch)
    out = {"batch": batch, "forward_gflop_per_image": f_img / 1e9,
           "params_millions": sum(p.numel() for p in setup.student.parameters()) / 1e6}
    for kind, passes in (("diffusion", 3), ("mcd", 5)):      # forward-equivalents: fwd+bwd = 3, + 2 no-grad forwards
        reset_peak_memory(setup.device)
        warm_s, step_s = timed(lambda: setup.step(kind, x), setup.device, warmup, steps)
        tflops = passes * f_img * batch / step_s / 1e12
        out[kind] = {"step_s": step_s, "img_per_s": batch / step_s, "warmup_s": warm_s,
                     "compile_s": max(warm_s - warmup * step_s, 0.0), "tflops": tflops,
                     "mfu": tflops / peak_tflops if peak_tflops else None, "peak_memory_bytes": peak_memory(setup.device)}
    out["mcd_over_diffusion"] = out["mcd"]["step_s"] / out["diffusion"]["step_s"]
    out["flop_ideal_ratio"] = 5 / 3
    out["goal_ratio"] = GOAL_MCD_RATIO
    return out


def bench_sampling(setup: Setup, batch: int, teacher_steps: int, min_rounds: int = 3, min_seconds: float = 2.0) -> dict:
    """The teacher once (hundreds of steps average themselves); the students in interleaved rounds (median per S),
    so a slow spell on a shared machine hits every S alike."""

    import torch

    from multistep.diffusion.samplers import ddim_sample, mcm_sample

    f = setup.student.eval()
    noise = torch.randn((batch, *image_shape(setup.size)), generator=torch.Generator().manual_seed(2)).to(setup.device)
    warm, _ = timed(lambda: mcm_sample(f, setup.sched, noise, 1), setup.device, 1, 0)  # warm-up (and compile)
    out = {"batch": batch, "teacher_steps": teacher_steps, "warmup_s": warm, "student": {}}
    _, t_teacher = timed(lambda: ddim_sample(f, setup.sched, noise, teacher_steps, xvar="analytic"), setup.device, 0, 1)
    out["teacher"] = {"seconds": t_teacher, "img_per_s": batch / t_teacher}
    times: dict[int, list[float]] = {S: [] for S in SAMPLER_STEPS}
    t0 = time.perf_counter()
    while len(times[1]) < min_rounds or time.perf_counter() - t0 < min_seconds:
        for S in SAMPLER_STEPS:
            times[S].append(timed(lambda: mcm_sample(f, setup.sched, noise, S), setup.device, 0, 1)[1])
    for S in SAMPLER_STEPS:
        t = statistics.median(times[S])
        speedup, goal = t_teacher / t, 0.9 * teacher_steps / S
        out["student"][str(S)] = {"seconds": t, "img_per_s": batch / t, "speedup": speedup, "goal": goal,
                                  "speedup_over_goal": speedup / goal, "calls": len(times[S])}
    setup.student.train()
    return out


def sqrtm_frechet(mu1, s1, mu2, s2) -> float:
    """The usual FID formula (pytorch-fid / TTUR) with scipy.linalg.sqrtm, for comparison."""
    import numpy as np
    from scipy import linalg

    covmean = linalg.sqrtm(s1 @ s2)
    covmean = covmean[0] if isinstance(covmean, tuple) else covmean
    if not np.isfinite(covmean).all():
        off = np.eye(len(s1)) * 1e-6
        covmean = linalg.sqrtm((s1 + off) @ (s2 + off))
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(np.real(covmean)))


def bench_evaluation(d: int, seed: int = 0, repeats: int = 3) -> dict:
    """Two full-rank d x d covariances like Inception statistics (Wishart, 1.5 d samples).

    Both formulas run once on a small problem first (library and thread-pool start-up is not part of either);
    frechet_distance is then timed `repeats` times (median), the much slower sqrtm formula once."""
    import numpy as np

    from multistep.metrics.frechet import frechet_distance

    rng = np.random.default_rng(seed)
    stats = []
    for _ in range(2):
        w = rng.standard_normal((d, d + d // 2)) / np.sqrt(d)
        stats += [rng.standard_normal(d) * 0.1, w @ w.T]
    mu1, s1, mu2, s2 = stats
    small = [a[:64] if a.ndim == 1 else a[:64, :64] for a in stats]
    frechet_distance(*small), sqrtm_frechet(*small)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fd = frechet_distance(mu1, s1, mu2, s2)
        times.append(time.perf_counter() - t0)
    t_fd = statistics.median(times)
    t0 = time.perf_counter()
    ref = sqrtm_frechet(mu1, s1, mu2, s2)
    t_ref = time.perf_counter() - t0
    return {"d": d, "frechet_s": t_fd, "frechet_s_all": times, "sqrtm_s": t_ref, "speedup": t_ref / t_fd, "fd": fd, "fd_sqrtm": ref,
            "relative_difference": abs(fd - ref) / abs(ref), "goal_speedup": GOAL_FD_SPEEDUP, "goal_agreement": GOAL_FD_AGREEMENT}


def bench_data(rows: int = 20000, side: int = 32, batch: int = 128, batches: int = 300, step_ms: float = 5.0,
               rounds: int = 2) -> dict:
    """ms per batch the step waits for data, ShardStream without and with its reader thread (worker.PREFETCH_BATCHES),
    32x32x3 uint8 images in 1000-row shards; rounds alternate the two so a slow spell hits both."""
    import shutil
    import tempfile

    import numpy as np

    from multistep.data.parquet import ShardStream, write_shards
    from multistep.sweep.worker import PREFETCH_BATCHES

    folder = tempfile.mkdtemp(prefix="msbench-data-")
    try:
        x = np.random.default_rng(0).integers(0, 256, (rows, side, side, 3), dtype=np.uint8)
        write_shards(x, np.arange(rows) % 10, folder, shard_size=1000)
        stream = ShardStream(folder, 0, 1, seed=0, batch_size=batch)
        waits: dict[int, list[float]] = {0: [], PREFETCH_BATCHES: []}
        for _ in range(rounds):
            for prefetch in waits:
                it = stream.batches(prefetch=prefetch)
                next(it)
                wait = 0.0
                for _ in range(batches):
                    t0 = time.perf_counter()
                    next(it)
                    wait += time.perf_counter() - t0
                    time.sleep(step_ms / 1000)
                waits[prefetch].append(wait / batches * 1000)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    wait_ms = {str(k): statistics.median(v) for k, v in waits.items()}
    return {"batch": batch, "image": [3, side, side], "step_ms": step_ms, "batches": batches, "rounds": rounds,
            "wait_ms_per_batch": wait_ms, "all_wait_ms": {str(k): v for k, v in waits.items()}}


# -- report ----------------------------------------------------------------------------------------------
def _g(v, spec=".3g") -> str:
    return "-" if v is None else format(v, spec)


def table(res: dict) -> str:
    lines = [f"multistep bench: size {res['config']['size']} on {res['machine'].get('gpu') or res['machine']['cpu']} "
             f"({res['config']['precision']}, compile {res['config']['compile']}, channels_last {res['config']['channels_last']})"]
    tr = res.get("training")
    if tr:
        lines += [f"\ntraining  batch {tr['batch']}, {tr['params_millions']:.3g}M params, {tr['forward_gflop_per_image']:.3g} GFLOP/img forward",
                  f"  {'step':<10}{'ms/step':>10}{'img/s':>10}{'TFLOP/s':>10}{'MFU':>8}{'compile s':>11}{'peak MiB':>10}"]
        for k in ("diffusion", "mcd"):
            r = tr[k]
            lines.append(f"  {k:<10}{r['step_s'] * 1e3:>10.2f}{r['img_per_s']:>10.1f}{_g(r['tflops']):>10}"
                         f"{_g(r['mfu'] and 100 * r['mfu'], '.1f') + ('%' if r['mfu'] else ''):>8}{r['compile_s']:>11.2f}"
                         f"{r['peak_memory_bytes'] / 2**20:>10.0f}")
        lines.append(f"  MCD / diffusion step: {tr['mcd_over_diffusion']:.3f} (FLOP ideal {tr['flop_ideal_ratio']:.3f}, goal <= {tr['goal_ratio']})")
    sa = res.get("sampling")
    if sa:
        lines += [f"\nsampling  batch {sa['batch']}: teacher {sa['teacher_steps']} aDDIM steps {sa['teacher']['img_per_s']:.3g} img/s",
                  f"  {'S':>3}{'img/s':>12}{'speedup':>10}{'goal':>8}{'of goal':>9}"]
        for S, r in sa["student"].items():
            lines.append(f"  {S:>3}{r['img_per_s']:>12.4g}{r['speedup']:>10.1f}{r['goal']:>8.1f}{r['speedup_over_goal']:>9.2f}")
    ev = res.get("evaluation")
    if ev:
        lines.append(f"\nevaluation  d = {ev['d']}: frechet_distance {ev['frechet_s']:.3f} s (median of {len(ev['frechet_s_all'])}), sqrtm formula {ev['sqrtm_s']:.3f} s, "
                     f"speedup {ev['speedup']:.1f}x (goal {ev['goal_speedup']:.0f}x), relative difference {ev['relative_difference']:.2e}")
    da = res.get("data")
    if da:
        w = da["wait_ms_per_batch"]
        lines.append(f"\ndata  Parquet, batch {da['batch']} x {da['image']}, beside a {da['step_ms']:g} ms step: the step waits "
                     + ", ".join(f"{v:.2f} ms/batch with prefetch {k}" for k, v in w.items()))
    orc = res.get("orchestration")
    if orc:
        lines.append(f"\norchestration (runner {orc['runner']})  4 trials of {orc['iterations']} iterations: sweep {orc['sweep_s']:.1f} s, plain "
                     f"{orc['plain_s']:.1f} s, ratio {orc['ratio']:.2f}; per trial overhead {orc['overhead_per_trial_s']:.1f} s "
                     f"(load average {', '.join(f'{k} {v:.1f}' for k, v in orc['load_average_1min'].items())})")
        lines.append(f"  fixed cost per trial (median, all but the loop): {orc['fixed_per_trial_median_s']:.1f} s; "
                     f"implied ratio for 30 s loops {orc['estimated_ratio_30s_trials']:.2f} (goal <= {orc['goal_ratio']})")
        lines.append(f"  processes (actors) the trials started: {orc['ray_actors']}")
        lines.append(f"  {'before the first trial (Ray start, MLflow, assets)':<52}{orc['before_first_trial_s']:>8.2f} s")
        lines += [f"  {'per trial: ' + k:<52}{v:>8.2f} s" for k, v in orc["breakdown_mean_s"].items()]
        lines.append(f"  {'after the last trial (results, plot, artifacts)':<52}{orc['after_last_trial_s']:>8.2f} s")
        lines += [f"  {'fresh process, ' + k:<52}{v:>8.2f} s" for k, v in orc["import_s"].items()]
    return "\n".join(lines)


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
    parts = {p.strip() for p in args.parts.split(",") if p.strip()} | ({"orchestration"} if args.orchestration else set())
    unknown = parts - {"training", "sampling", "evaluation", "data", "orchestration"}
    if unknown:
        raise ConfigError(f"--parts: unknown part(s) {', '.join(sorted(unknown))}")
    preset = SIZES[args.size]
    peak = args.peak_tflops or default_peak_tflops(device, args.precision)
    res = {"machine": machine(device),
           "config": {"size": args.size, "device": device, "precision": args.precision, "compile": args.compile,
                      "channels_last": args.channels_last, "peak_tflops": peak, "steps": args.steps, "warmup": args.warmup}}
    if parts & {"training", "sampling"}:
        threads = torch.get_num_threads()
        torch.set_num_threads(args.threads or threads)   # networks only: the evaluation part uses every core
        res["config"]["torch_threads"] = torch.get_num_threads()
        try:
            setup = Setup(args.size, device, args.precision, args.compile, args.channels_last)
            for note in setup.notes:   # e.g. compile disabled for want of a toolchain: figures are eager ones
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
        from multistep.bench_orchestration import bench_orchestration

        res["orchestration"] = bench_orchestration(args.trial_seconds, args.work_dir, args.runner)
    return res


def cmd_bench(args) -> int:
    res = run(args)
    print(table(res), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2))
        print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    from multistep.cli import main

    sys.exit(main(["bench", *sys.argv[1:]]))
