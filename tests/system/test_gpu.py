"""The GPU code paths on a real CUDA device (pytest -m gpu; benchmarks/gpu_check.sh runs them on a lent GPU).

Without a GPU every `gpu` test skips with "no GPU". This file imports only the maths and training layers (no Ray,
MLflow or pydantic), because the lent GPU machine has none of them. The torch Fréchet path is also checked on CPU.
"""

import numpy as np
import pytest
import torch

from multistep.bench.training import Setup
from multistep.data.gmm import GaussianMixture
from multistep.diffusion.schedules import make_schedule
from multistep.methods.mcm import MCM
from multistep.metrics.frechet import frechet_distance, frechet_distance_torch
from multistep.nets.analytic import MixtureDenoiser
from multistep.nets.mlp import MLP, VDenoiser
from multistep.train import perf

gpu = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")]


def gpu_test(fn):
    """Marked `gpu` (selected by -m gpu) and skipped with "no GPU" where CUDA is not available."""
    for mark in gpu:
        fn = mark(fn)
    return fn


def gaussians(d: int, rank: int | None = None, seed: int = 0):
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((d, rank or d + d // 2)) / np.sqrt(d)
    w2 = rng.standard_normal((d, d + d // 2)) / np.sqrt(d)
    return rng.standard_normal(d) * 0.1, w1 @ w1.T, rng.standard_normal(d) * 0.1, w2 @ w2.T


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=gpu)])
@pytest.mark.parametrize("rank", [None, 40])
def test_frechet_torch_path_equals_the_cpu_path(device, rank):
    stats = gaussians(128, rank)
    ref = frechet_distance(*stats)
    got = frechet_distance_torch(*stats, device=device)
    # full rank: both take Cholesky + eigvalsh (round-off only); rank-deficient: eigh's square root, ~sqrt(eps) there
    assert got == pytest.approx(ref, rel=1e-12 if rank is None else 1e-6)
    assert frechet_distance_torch(stats[0], stats[1], stats[0], stats[1], device=device) == 0.0
    with pytest.raises(ValueError, match="shape mismatch"):
        frechet_distance_torch(stats[0][:5], stats[1], stats[2], stats[3], device=device)


@gpu_test
def test_mcd_loss_on_the_gpu_equals_the_cpu_loss():
    """Every draw comes from the CPU generator, so the two devices see the same numbers: only arithmetic differs."""
    sched = make_schedule("cosine")
    gmm = GaussianMixture.random((8,), 4, 0.6, 0.1, seed=0)
    teacher = MixtureDenoiser(gmm, sched)
    torch.manual_seed(0)
    net = MLP(8, 64, 2, 16)
    losses = {}
    for device in ("cpu", "cuda"):
        f = VDenoiser(net.to(device), sched)
        m = MCM(sched, 4, teacher=teacher, anneal="constant", anneal_params={"n": 32})
        x = gmm.sample(256, torch.Generator().manual_seed(1), dtype=torch.float64).to(device)
        loss, _ = m.loss(f, x, 0, 100, torch.Generator().manual_seed(2))
        losses[device] = float(loss)
    assert losses["cuda"] == pytest.approx(losses["cpu"], rel=1e-4)


@gpu_test
def test_bf16_channels_last_steps_on_the_gpu_keep_float64_targets():
    setup = Setup("cpu", "cuda", precision="bf16", channels_last=True)
    x = setup.batch(8)
    z_t, t, x_tgt, _, _ = setup.method.targets(setup.student, x.double(), 0, 100, torch.Generator().manual_seed(0))
    assert x_tgt.dtype == torch.float64 and x_tgt.is_cuda
    assert setup.student.v(z_t, t).dtype == torch.float32  # bf16 inside the network only
    before = [p.detach().clone() for p in setup.student.parameters()]
    for kind in ("mcd", "diffusion"):
        setup.step(kind, x)
    after = list(setup.student.parameters())
    assert all(torch.isfinite(p).all() for p in after)
    assert any(not torch.equal(a, b) for a, b in zip(before, after))
    assert setup.state.opt.defaults.get("fused") is True  # the fused CUDA Adam
    assert setup.student.net.conv_in.weight.is_contiguous(memory_format=torch.channels_last)


@gpu_test
def test_compiled_unet_matches_eager_on_the_gpu():
    why = perf.compile_unavailable("cuda")
    if why:
        pytest.skip(f"torch.compile cannot build CUDA kernels here: {why}")
    setup = Setup("cpu", "cuda")
    torch.nn.init.normal_(setup.student.net.out[-1].weight, std=0.1)  # the output conv starts at zero
    z = torch.randn(8, 1, 8, 8, device="cuda")
    t = torch.rand(8, device="cuda", dtype=torch.float64)
    with torch.no_grad():
        eager = setup.student.v(z, t)
        setup.student.compiled = True
        comp = setup.student.v(z, t)
    assert torch.allclose(comp, eager, rtol=1e-3, atol=1e-3 * float(eager.abs().max()))
