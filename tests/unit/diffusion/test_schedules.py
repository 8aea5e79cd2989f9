"""Noise schedules (diffusion/schedules.py, algorithms.md §1.1-1.2) on random inputs: VP, logSNR and its inverse,
finite ends, the clipped, shifted and interpolated cosines."""

import math

import pytest
import torch

from multistep.diffusion.samplers import ddim_sample
from multistep.diffusion.schedules import make_schedule

pytestmark = pytest.mark.usefixtures("one_thread")


F64 = torch.float64


COS = make_schedule("cosine")


SCHEDULES = [
    COS,
    make_schedule("clipped_cosine"),
    make_schedule("shifted_cosine", image_d=64, noise_d=32),
    make_schedule("interpolated_cosine", image_d=64, noise_low=32, noise_high=64),
]


IDS = [s.name for s in SCHEDULES]


@pytest.mark.parametrize("sch", SCHEDULES, ids=IDS)
def test_schedule_vp_and_logsnr_inverse(sch):
    t = torch.linspace(0.0, 1.0, 2001, dtype=F64)
    a, s = sch.alpha_sigma(t)
    assert torch.allclose(a**2 + s**2, torch.ones_like(t), atol=1e-14, rtol=0)  # alpha^2 + sigma^2 = 1
    lam = sch.logsnr(t)
    assert (lam[1:] <= lam[:-1]).all()  # logSNR decreasing in t
    inner = t[1:-1]
    lam_in = sch.logsnr(inner)
    a_in, s_in = sch.alpha_sigma(inner)
    assert torch.allclose(torch.log(a_in**2 / s_in**2), lam_in, atol=1e-9, rtol=1e-9)  # alpha, sigma match logsnr
    clip = getattr(sch, "clip", math.inf)
    free = lam_in.abs() < clip - 1e-6  # where the +-clip is inactive
    assert free.sum() > 1500
    assert torch.allclose(sch.t_from_logsnr(lam_in[free]), inner[free], atol=1e-10, rtol=0)
    lam_grid = torch.linspace(-min(clip, 30) + 0.01, min(clip, 30) - 0.01, 501, dtype=F64)
    if sch.name == "clipped_cosine":
        lam_grid = lam_grid.clamp(-20, 20)
    assert torch.allclose(sch.logsnr(sch.t_from_logsnr(lam_grid)), lam_grid, atol=1e-8, rtol=0)
    assert torch.allclose(sch.t_from_alpha(a_in[free]), inner[free], atol=1e-8, rtol=0)


@pytest.mark.parametrize("sch", SCHEDULES, ids=IDS)
def test_schedule_finite_at_both_ends_and_samplers_finite(sch):
    """Regression: interpolated cosine gave lambda(0) = 0 * inf = nan, so every sample ended as nan."""
    a, s = sch.alpha_sigma(torch.tensor([0.0, 1.0], dtype=F64))
    assert torch.isfinite(a).all() and torch.isfinite(s).all() and a[0] > 0.999 and s[1] > 0.999
    x, _ = ddim_sample(lambda z, t: 0.5 * z, sch, torch.randn(4, 3, dtype=F64), 8, xvar="analytic")
    assert torch.isfinite(x).all()


def test_plain_cosine_ends_exact():
    a, s = COS.alpha_sigma(torch.tensor([0.0, 1.0], dtype=F64))
    assert a[0] == 1 and s[0] == 0 and s[1] == 1 and abs(a[1]) < 1e-16


def test_clipped_cosine_range():
    sch = SCHEDULES[1]
    t = torch.linspace(0, 1, 10001, dtype=F64)
    lam = sch.logsnr(t)
    assert lam.max() <= 20 + 1e-9 and lam.min() >= -20 - 1e-9
    assert abs(lam[0] - 20) < 1e-9 and abs(lam[-1] + 20) < 1e-9  # the range is used in full


def test_interpolated_cosine_closed_form():
    """noise_high = image_d = 64: lambda(t) = lambda_cos(t) + 2 t log(32/64) (= lambda_cos - 1.386 t)."""
    sch = SCHEDULES[3]
    t = torch.linspace(0.001, 0.999, 999, dtype=F64)
    want = COS.logsnr(t) + 2 * t * math.log(32 / 64)
    free = want.abs() < 15
    assert torch.allclose(sch.logsnr(t)[free], want[free], atol=1e-12, rtol=0)
    assert torch.allclose(sch.logsnr(t)[~free], want[~free].clamp(-15, 15), atol=1e-12, rtol=0)
    shifted = SCHEDULES[2]
    assert torch.allclose(shifted.logsnr(t)[free], (COS.logsnr(t) + 2 * math.log(0.5))[free].clamp(-15, 15))
