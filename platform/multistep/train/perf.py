"""GPU fast paths that also run on CPU with small shapes (bf16 autocast, channels_last, torch.compile,
fused Adam), plus the two measurements the benchmark needs: FLOPs of a call and peak memory.

Precision policy (algorithms.md A7): autocast covers the network forward only. `FastNet` runs the
wrapped v-network under autocast and hands back float32, so everything around it (z_t, the teacher's
aDDIM step, DDIM, invDDIM, the loss) stays in float32/float64.
"""

from __future__ import annotations

import contextlib
import resource
import sys
import warnings

import torch
from torch import nn

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}


def device_type(device) -> str:
    return torch.device(device).type


def autocast(device, precision: str = "fp32"):
    """torch.autocast for `precision` on `device` ("fp32": a no-op context)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, not {precision!r}")
    if PRECISIONS[precision] is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type(device), dtype=PRECISIONS[precision])


def channels_last(x):
    """A module's 4-D weights, or a 4-D tensor, in channels_last memory format; anything else unchanged."""
    if isinstance(x, nn.Module):
        return x.to(memory_format=torch.channels_last)
    if isinstance(x, torch.Tensor) and x.ndim == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


class FastNet(nn.Module):
    """v_theta under the fast paths: input in channels_last (4-D only), forward under autocast, float32 out."""

    def __init__(self, net: nn.Module, device="cpu", precision: str = "fp32", memory_channels_last: bool = False):
        super().__init__()
        autocast(device, precision)                       # validates precision
        self.net, self.device, self.precision, self.memory_channels_last = net, device, precision, memory_channels_last
        if memory_channels_last:
            channels_last(net)

    def forward(self, z: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        z = z.float()
        if self.memory_channels_last:
            z = channels_last(z)
        with autocast(self.device, self.precision):
            out = self.net(z, *args, **kwargs)
        return out.float()


class InferenceTeacher(nn.Module):
    """A frozen denoiser whose forward runs under torch.inference_mode (no autograd bookkeeping at all).

    The output is cloned outside inference mode, so callers may use it like any tensor.
    """

    def __init__(self, f: nn.Module):
        super().__init__()
        self.f = f.requires_grad_(False).eval()

    def forward(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            out = self.f(z, t)
        return out.clone()


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
    except Exception as e:  # noqa: BLE001 - InvalidCxxCompiler and import problems alike
        return f"no working C++ compiler for inductor ({type(e).__name__})"
    return None


def maybe_compile(module: nn.Module, enabled: bool, device="cpu", **kwargs) -> nn.Module:
    """torch.compile(module) if enabled and the toolchain is present; otherwise the module, with a warning.

    Compilation happens on the first call (time it separately: it is paid once per trial).
    """
    if not enabled:
        return module
    why = compile_unavailable(device)
    if why:
        warnings.warn(f"torch.compile disabled: {why}; running eagerly", RuntimeWarning, stacklevel=2)
        return module
    return torch.compile(module, **kwargs)


def make_adam(params, lr: float, device="cpu", **kwargs) -> torch.optim.Adam:
    """Adam with the fused CUDA kernel on GPU (one launch for all parameters), foreach ops elsewhere."""
    if device_type(device) == "cuda":
        return torch.optim.Adam(params, lr=lr, fused=True, **kwargs)
    return torch.optim.Adam(params, lr=lr, foreach=True, **kwargs)


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
    return int(rss if sys.platform == "darwin" else rss * 1024)   # Linux reports KiB


def apply_fast_paths(denoisers, device, precision: str = "fp32", memory_channels_last: bool = False,
                     compile: bool = False) -> list[str]:
    """The sweep file's train.precision / channels_last / compile on the network denoisers of a trial (VDenoiser:
    students and network teachers; the analytic teacher has no network). Returns notices (e.g. compile disabled)."""
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
