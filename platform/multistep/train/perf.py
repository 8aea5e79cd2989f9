"""GPU fast paths that also run on CPU with small shapes (bf16 autocast, channels_last, torch.compile),
plus the two measurements the benchmark needs: FLOPs of a call and peak memory.

Precision policy (algorithms.md A7): autocast covers the network forward only. `apply_fast_paths` switches
them on in a `VDenoiser` (nets/mlp.py), whose `v` runs the network under autocast and hands back float32,
so everything around it (z_t, the teacher's aDDIM step, DDIM, invDDIM, the loss) stays in float32/float64.
Sweeps (the trial worker) and the benchmark use the same switches.
"""

from __future__ import annotations

import resource
import sys

import torch
from torch import nn

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}


def device_type(device) -> str:
    return torch.device(device).type


def channels_last(x):
    """A module's 4-D weights, or a 4-D tensor, in channels_last memory format; anything else unchanged."""
    if isinstance(x, nn.Module):
        return x.to(memory_format=torch.channels_last)
    if isinstance(x, torch.Tensor) and x.ndim == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


def compile_unavailable(device) -> str | None:
    """Why torch.compile's default backend (inductor) cannot build kernels for `device`; None if it can."""
    if device_type(device) == "cuda":
        from torch.utils._triton import has_triton

        return None if has_triton() else "triton is not installed"
    if sys.platform == "win32":
        return "inductor's C++ backend is not set up on Windows here"
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        get_cpp_compiler()
    except Exception as e:  # InvalidCxxCompiler and import problems alike
        return f"no working C++ compiler for inductor ({type(e).__name__}: {str(e).strip()[:200]})"
    return None


def flops_per_call(fn, *args, **kwargs) -> int:
    """FLOPs of one call fn(*args) by torch.utils.flop_counter (matmuls, convolutions, attention).

    Works on meta tensors too: count on a network built under `torch.device("meta")` to pay nothing.
    """
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn(*args, **kwargs)
    return int(counter.get_total_flops())


def synchronize(device) -> None:
    """Wait for queued GPU work (timing needs it); a no-op on CPU."""
    if device_type(device) == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device) -> None:
    if device_type(device) == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device) -> int:
    """Peak bytes: GPU memory allocated by torch since the last reset on CUDA; the process's peak RSS on CPU
    (which is never reset, so it is an upper bound for the phase measured)."""
    if device_type(device) == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)  # Linux reports KiB


def apply_fast_paths(
    denoisers, device, precision: str = "fp32", memory_channels_last: bool = False, compile: bool = False
) -> list[str]:
    """train.precision / channels_last / compile (sweep file) or --precision / --channels-last / --compile (bench) on
    network denoisers (VDenoiser: students and network teachers; the analytic teacher has no network). Weights move
    to channels_last here; compilation happens on the first call (paid once per network). Returns notices (e.g.
    compile disabled for want of a toolchain)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, not {precision!r}")
    notes = []
    if compile and (why := compile_unavailable(device)):
        notes.append(f"train.compile: disabled, {why}; running eagerly")
        compile = False
    for d in denoisers:
        if not hasattr(d, "autocast_dtype"):
            continue
        d.autocast_dtype = PRECISIONS[precision]
        d.channels_last = memory_channels_last
        if memory_channels_last:
            channels_last(d.net)
        d.compiled = compile
    return notes
