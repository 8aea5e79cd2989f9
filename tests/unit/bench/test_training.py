"""bench/training.py: the benchmark's Setup steps like a trial (bf16 keeps float64 targets, the trial's Adam, FLOP
counts) at the CPU and GPU sizes."""

import os

import pytest
import torch
from torch import nn

from multistep import bench
from multistep.train import perf

pytestmark = pytest.mark.usefixtures("one_thread")


def test_mcd_step_under_bf16_keeps_float64_targets():
    setup = bench.Setup("cpu", "cpu", precision="bf16", channels_last=True)
    x = setup.batch(4)
    g = torch.Generator().manual_seed(0)
    z_t, t, x_tgt, n_rel, n_seg = setup.method.targets(setup.student, x, 0, 100, g)
    assert z_t.dtype == torch.float64 and t.dtype == torch.float64 and x_tgt.dtype == torch.float64
    x_tch = setup.teacher(z_t, t)  # runs under inference_mode, hands back a normal tensor
    assert x_tch.dtype == torch.float64 and not x_tch.is_inference() and not x_tch.requires_grad
    before = [p.detach().clone() for p in setup.student.parameters()]
    for kind in ("mcd", "diffusion"):
        setup.step(kind, x)
    after = list(setup.student.parameters())
    assert all(torch.isfinite(p).all() for p in after)
    assert any(not torch.equal(a, b) for a, b in zip(before, after))
    assert all(not p.requires_grad for p in setup.teacher.parameters())
    cl = torch.channels_last
    assert setup.state.ema.net.conv_in.weight.is_contiguous(memory_format=cl)  # EMA lerps between like layouts
    assert setup.teacher.net.conv_in.weight.is_contiguous(memory_format=cl)


def test_the_benchmark_steps_with_the_trials_adam_and_flop_count():
    setup = bench.Setup("cpu", "cpu")
    assert setup.state.opt.defaults["foreach"] is True and not setup.state.opt.defaults.get("fused")
    lin = nn.Linear(8, 4, bias=False)
    assert perf.flops_per_call(lin, torch.randn(5, 8)) == 2 * 5 * 8 * 4
    assert perf.peak_memory("cpu") > 0


@pytest.mark.parametrize("size, gflop", [("cifar", 12.4), ("imagenet64", 198)])
def test_gpu_sizes_construct_and_count_flops(size, gflop):
    """Counted on a meta-device copy: the full-size networks cost nothing to measure."""
    assert bench.forward_flops_per_image(size) / 1e9 == pytest.approx(gflop, rel=0.01)


@pytest.mark.parametrize(
    "size",
    [
        "cifar",
        pytest.param(
            "imagenet64",
            marks=[
                pytest.mark.slow,
                pytest.mark.skipif(
                    not os.environ.get("MULTISTEP_BIG_TESTS"),
                    reason="~55 s and 7 GB on CPU: set MULTISTEP_BIG_TESTS=1 (same code path as cifar)",
                ),
            ],
        ),
    ],
)
def test_gpu_sizes_run_one_step_on_cpu(size):
    """One diffusion and one MCD step at batch 1 (imagenet64: ~35 s of CPU and ~7 GB, so marked slow)."""
    setup = bench.Setup(size, "cpu")
    x = setup.batch(1)
    assert x.shape[1:] == bench.image_shape(size)
    before = [p.detach().clone() for p in setup.student.parameters()]
    for kind in ("diffusion", "mcd"):
        setup.step(kind, x)
    assert any(not torch.equal(b, p) for b, p in zip(before, setup.student.parameters()))
    assert all(torch.isfinite(p).all() for p in setup.student.parameters())
