"""nets/mlp.py: octave time features, and compiled copies of a VDenoiser run their own weights."""

import pytest
import torch

from multistep.nets.mlp import octave_features
from multistep.train import perf

pytestmark = pytest.mark.usefixtures("one_thread")


def test_octave_features():
    t = torch.tensor([0.0, 0.25, 1.0])
    f = octave_features(t, 4)  # sin, sin, cos, cos of pi t, 2 pi t
    assert torch.allclose(f[1], torch.tensor([2**-0.5, 1.0, 2**-0.5, 0.0]), atol=1e-6)
    assert f.shape == (3, 4)


def test_compiled_denoiser_copies_use_their_own_weights():
    """train.compile: a deep copy of a compiled student (EMA, target net, phase teacher) must run ITS weights."""
    why = perf.compile_unavailable("cpu")
    if why:
        pytest.skip(f"torch.compile toolchain missing here: {why}")
    import copy

    from multistep.diffusion.schedules import make_schedule
    from multistep.nets.mlp import MLP, VDenoiser

    torch.manual_seed(0)
    f = VDenoiser(MLP(4, 16, 1, 8), make_schedule("cosine"))
    z, t = torch.randn(5, 4), torch.rand(5)
    with torch.no_grad():
        eager = f(z, t)
        f.compiled = True
        torch.testing.assert_close(f(z, t), eager, rtol=1e-5, atol=1e-5)
        g = copy.deepcopy(f)
        for p in g.parameters():
            p.add_(0.5)
        g.compiled = False
        want = g(z, t)
        g.compiled = True
        torch.testing.assert_close(g(z, t), want, rtol=1e-5, atol=1e-5)  # not the original's graph and weights
        assert not torch.allclose(want, eager)
