"""The GPU fast paths (train/perf.py) on CPU: bf16 autocast and channels_last reach the network only, compile falls
back with a notice, and a trial's denoisers switch them on."""

import pytest
import torch
from torch import nn

from multistep import bench
from multistep.train import perf

pytestmark = pytest.mark.usefixtures("one_thread")


def _unet_with_nonzero_output():
    net = bench.make_net("cpu")
    nn.init.normal_(net.out[-1].weight, std=0.1)  # the output conv starts at zero (v = 0): make it say something
    return net


def test_bf16_autocast_and_channels_last_reach_the_network_only():
    from multistep.diffusion.schedules import make_schedule
    from multistep.nets.mlp import VDenoiser

    net = _unet_with_nonzero_output()
    seen = {}
    net.conv_in.register_forward_hook(
        lambda m, i, o: seen.update(dtype=o.dtype, cl=i[0].is_contiguous(memory_format=torch.channels_last))
    )
    fast = VDenoiser(net, make_schedule("cosine"))
    assert perf.apply_fast_paths([fast], "cpu", "bf16", memory_channels_last=True) == []
    assert net.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    z, t = torch.randn(3, 1, 8, 8, dtype=torch.float64), torch.rand(3, dtype=torch.float64)
    v = fast.v(z, t)
    assert seen == {"dtype": torch.bfloat16, "cl": True}  # the convs ran in bf16 on channels_last input
    assert v.dtype == torch.float32 and v.shape == z.shape
    perf.apply_fast_paths([fast], "cpu", "fp32")
    v32 = fast.v(z, t)
    assert seen["dtype"] == torch.float32
    assert torch.allclose(v, v32, atol=0.05 * v32.abs().max().item()) and not torch.equal(v, v32)
    with pytest.raises(ValueError, match="precision"):
        perf.apply_fast_paths([fast], "cpu", "fp16")


def test_compile_falls_back_with_a_notice_without_a_compiler(monkeypatch):
    import torch._inductor.config as inductor_config

    from multistep.diffusion.schedules import make_schedule
    from multistep.nets.mlp import MLP, VDenoiser

    monkeypatch.setattr(inductor_config.cpp, "cxx", ("/nonexistent/c++",))
    assert "C++ compiler" in perf.compile_unavailable("cpu")
    f = VDenoiser(MLP(4, 16, 1, 8), make_schedule("cosine"))
    (note,) = perf.apply_fast_paths([f], "cpu", compile=True)
    assert note.startswith("train.compile: disabled") and "C++ compiler" in note and not f.compiled


def test_sweep_fast_path_switches_on_denoisers():
    """train.precision / channels_last / compile as applied to a trial's denoisers: bf16 only inside the network
    (the output keeps z's dtype, close to fp32), channels_last changes no number, the analytic teacher is skipped."""
    import copy

    from multistep.data.gmm import GaussianMixture
    from multistep.diffusion.schedules import make_schedule
    from multistep.nets.analytic import MixtureDenoiser
    from multistep.nets.mlp import VDenoiser
    from multistep.train.teacher import build_net

    sched = make_schedule("cosine")
    torch.manual_seed(0)
    f = VDenoiser(
        build_net({"kind": "unet", "base_ch": 8, "ch_mult": [1, 2], "time_dim": 8, "in_ch": 1, "resolution": 8}), sched
    )
    with torch.no_grad():
        for p in f.parameters():  # not the zero-initialised output layer
            p.add_(0.1 * torch.randn_like(p))
    z, t = torch.randn(4, 1, 8, 8, dtype=torch.float64), torch.rand(4, dtype=torch.float64)
    ref = f(z, t)
    fast = copy.deepcopy(f)
    analytic = MixtureDenoiser(GaussianMixture.random((4,), 2, 0.6, 0.1, seed=0), sched)
    assert perf.apply_fast_paths([fast, analytic], "cpu", "bf16", True, False) == []
    assert fast.autocast_dtype == torch.bfloat16 and fast.channels_last and not hasattr(analytic, "autocast_dtype")
    out = fast(z, t)
    assert out.dtype == torch.float64 and not torch.equal(out, ref)  # bf16 inside, float64 outside
    torch.testing.assert_close(out, ref, rtol=0.05, atol=0.05)
    fast.autocast_dtype = None  # channels_last alone: same numbers
    torch.testing.assert_close(fast(z, t), ref, rtol=1e-5, atol=1e-6)
