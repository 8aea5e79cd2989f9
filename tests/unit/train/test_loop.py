"""train/loop.py's warm start: its v-space error against the teacher, and its stopping rule."""

import pytest
import torch
from torch import nn

from multistep.data.gmm import GaussianMixture
from multistep.diffusion.schedules import make_schedule
from multistep.nets.analytic import MixtureDenoiser
from multistep.nets.mlp import MLP
from multistep.train.loop import WARM_START_T, WarmStart, v_error, warm_start

pytestmark = pytest.mark.usefixtures("one_thread")
GMM = GaussianMixture.random((4,), 3, 0.6, 0.2, seed=2)
COS = make_schedule("cosine")
TEACHER = MixtureDenoiser(GMM, COS)
sample = lambda g: GMM.sample(256, g)


class ExactV(nn.Module):
    """The teacher's own v: v = (alpha z - x_hat) / sigma."""

    def forward(self, z, t):
        a, s = (v[:, None] for v in COS.alpha_sigma(t.double()))
        return ((a * z.double() - TEACHER(z.double(), t.double())) / s).float()


def test_the_v_error_of_the_teacher_itself_is_float_noise():
    x = GMM.sample(512, torch.Generator().manual_seed(0), dtype=torch.float64)
    eps = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    err = v_error(ExactV(), COS, TEACHER, x, eps)
    assert list(err) == list(WARM_START_T) and max(err.values()) < 1e-5
    zero = v_error(lambda z, t: torch.zeros_like(z), COS, TEACHER, x, eps)
    assert min(zero.values()) > 0.1  # a net that says v = 0 is far off


def test_warm_start_stops_when_the_error_stops_improving_and_reports_it():
    torch.manual_seed(0)
    net = MLP(4, 16, 1, 8, time_features="octave")
    frozen = WarmStart(100, 1e-12, 0, schedule="constant", check_every=5, patience=2)  # cannot improve
    state, rep = warm_start(net, COS, TEACHER, sample, frozen)
    assert (rep["iterations"], rep["stopped"]) == (15, "converged") and [it for it, _ in rep["history"]] == [5, 10, 15]
    _, rep = warm_start(
        net, COS, TEACHER, sample, WarmStart(12, 1e-12, 0, schedule="cosine", check_every=5, patience=0)
    )
    assert (rep["iterations"], rep["stopped"]) == (12, "cap")  # patience 0: to the cap
    before = v_error(net, COS, TEACHER, *_held())
    _, rep = warm_start(net, COS, TEACHER, sample, WarmStart(300, 3e-3, 0, "adamw", "constant", 100, 2))
    assert sum(rep["v_rmse"].values()) < 0.8 * sum(before.values())  # it learns the teacher
    assert set(state) == set(net.state_dict())


def _held():
    x = GMM.sample(2048, torch.Generator().manual_seed(5), dtype=torch.float64)
    return x, torch.randn(x.shape, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
