"""Training-step figures: diffusion step versus MCD and sCD steps on the same UNet and batch (docs/performance.md).

The MCD step is a teacher forward, a no-grad reference forward and a forward+backward; the diffusion step only
the last (FLOP ideal ratio 5/3). The sCD step is a teacher forward, a JVP (about two forwards) and a
forward+backward (FLOP ideal ratio 6/3 = 2). FLOPs are counted once per architecture (FlopCounterMode on a meta-device copy);
TFLOP/s, MFU and peak memory are reported, compile time apart (it is paid once per trial).
"""

from __future__ import annotations

import os
import statistics
import time

GOAL_MCD_RATIO = 1.75  # MCD step / diffusion step (issue 9)
GOAL_SCD_RATIO = 2.3  # sCD step / diffusion step (issue 38)
GOAL_MFU = 0.35  # 64x64 UNet, bf16 + compile on an H100
GOAL_FD_SPEEDUP = 10.0  # frechet_distance versus sqrtm at d = 2048
GOAL_FD_AGREEMENT = 1e-6  # relative
SAMPLER_STEPS = (1, 2, 4, 8)

# UNet sizes: cpu = a few-thousand-parameter 8x8 net; cifar = DDPM's 35.7M CIFAR-10 UNet; imagenet64 = ADM/EDM's
# ImageNet-64 layout (192 channels, 1-2-3-4, 3 blocks, attention at 32/16/8; 265M parameters).
SIZES = {
    "cpu": {
        "net": dict(in_ch=1, base_ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), resolution=8),
        "batch": 16,
        "sample_batch": 64,
    },
    "cifar": {
        "net": dict(
            in_ch=3,
            base_ch=128,
            ch_mult=(1, 2, 2, 2),
            num_res_blocks=2,
            attn_resolutions=(16,),
            resolution=32,
            dropout=0.1,
        ),
        "batch": 128,
        "sample_batch": 256,
    },
    "imagenet64": {
        "net": dict(
            in_ch=3, base_ch=192, ch_mult=(1, 2, 3, 4), num_res_blocks=3, attn_resolutions=(32, 16, 8), resolution=64
        ),
        "batch": 128,
        "sample_batch": 128,
    },
}


# -- shared ------------------------------------------------------------------------------------------
def machine(device) -> dict:
    import platform

    import torch

    info = {
        "device": str(device),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
    }
    if torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    else:
        try:
            info["cpu"] = next(
                line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")
            )
        except (OSError, StopIteration):
            pass
    return info


# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) by a substring of torch.cuda.get_device_name; first match wins.
PEAK_BF16_TFLOPS = (
    ("H200", 989.0),
    ("H100", 989.0),
    ("GH200", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L40", 181.0),
    ("L4", 121.0),
    ("A10", 125.0),
    ("4090", 165.0),
    ("3090", 71.0),
)


def default_peak_tflops(device, precision: str = "bf16") -> float | None:
    """The device's dense bf16 peak (the MFU denominator for every precision, so fp32 and bf16 MFU compare);
    None on CPU or an unknown GPU (pass --peak-tflops)."""
    import torch

    del precision  # kept for callers: MFU is always against the bf16 peak
    if torch.device(device).type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_TFLOPS if key in name), None)


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
    """Student, frozen teacher (same architecture) and the MCM method, with the fast paths switched on; the
    optimiser, teacher and step are the trials' own (train/loop.py new_state, optimizer_step)."""

    def __init__(self, size: str, device, precision="fp32", compile=False, channels_last=False, seed=0):
        import copy

        import torch

        from multistep.diffusion.schedules import make_schedule
        from multistep.methods.mcm import MCM
        from multistep.methods.scm import SCM
        from multistep.nets.mlp import VDenoiser
        from multistep.train.loop import new_state
        from multistep.train.perf import apply_fast_paths

        torch.manual_seed(seed)
        self.size, self.device, self.sched = size, device, make_schedule("cosine")
        net = make_net(size, device)
        tnet = copy.deepcopy(net).requires_grad_(False).eval()  # the teacher: a trained copy in real use
        self.student, self.teacher = VDenoiser(net, self.sched), VDenoiser(tnet, self.sched)
        self.notes = apply_fast_paths([self.student, self.teacher], device, precision, channels_last, compile)
        self.method = MCM(
            self.sched, student_steps=4, teacher=self.teacher, anneal="constant", anneal_params={"n": 256}
        )
        self.scd = SCM(self.sched, student_steps=4, teacher=self.teacher, time_derivative_every=0)
        self.state = new_state(self.student, 2e-4, seed)  # Adam (foreach) and the eval EMA, as trials make them

    def batch(self, n: int):
        import torch

        g = torch.Generator().manual_seed(1)
        return (torch.rand((n, *image_shape(self.size)), generator=g) * 2 - 1).to(self.device)

    def step(self, part: str, x) -> None:
        """One optimizer step of the training loop (loss, backward, grad clip, Adam, eval EMA, the method's
        after_step as fit calls it); no host sync. part: diffusion (the teacher's v-loss), mcd or scd."""

        from multistep.diffusion.loss import v_loss
        from multistep.train.loop import ema_update, optimizer_step

        st, method = self.state, {"mcd": self.method, "scd": self.scd}.get(part)
        if method is None:
            loss = v_loss(self.student.v, self.sched, x, st.gen)  # the network under the same fast paths
        else:
            loss, _ = method.loss(self.student, x, 0, 1000, st.gen)
        optimizer_step(self.student, st.opt, loss, grad_clip=1.0)
        ema_update(st.ema, self.student, 0.999)
        if method is not None:
            method.after_step(self.student, st.ema)  # sCD's u(phi) takes its own Adam step; MCD's target EMA


# -- parts ---------------------------------------------------------------------------------------------
def bench_training(setup: Setup, batch: int, warmup: int, steps: int, peak_tflops: float | None) -> dict:
    from multistep.train.perf import peak_memory, reset_peak_memory

    f_img = forward_flops_per_image(setup.size)
    x = setup.batch(batch)
    out = {
        "batch": batch,
        "forward_gflop_per_image": f_img / 1e9,
        "params_millions": sum(p.numel() for p in setup.student.parameters()) / 1e6,
    }
    # forward-equivalents: fwd+bwd = 3; MCD + 2 no-grad forwards; sCD + a teacher forward and a JVP (~2)
    for part, passes in (("diffusion", 3), ("mcd", 5), ("scd", 6)):
        reset_peak_memory(setup.device)
        warm_s, step_s = timed(lambda part=part: setup.step(part, x), setup.device, warmup, steps)
        tflops = passes * f_img * batch / step_s / 1e12
        out[part] = {
            "step_s": step_s,
            "img_per_s": batch / step_s,
            "warmup_s": warm_s,
            "compile_s": max(warm_s - warmup * step_s, 0.0),
            "tflops": tflops,
            "mfu": tflops / peak_tflops if peak_tflops else None,
            "peak_memory_bytes": peak_memory(setup.device),
        }
    out["mcd_over_diffusion"] = out["mcd"]["step_s"] / out["diffusion"]["step_s"]
    out["flop_ideal_ratio"] = 5 / 3
    out["goal_ratio"] = GOAL_MCD_RATIO
    out["scd_over_diffusion"] = out["scd"]["step_s"] / out["diffusion"]["step_s"]
    out["scd_flop_ideal_ratio"] = 2.0
    out["scd_goal_ratio"] = GOAL_SCD_RATIO
    return out
