"""metrics/evaluate.py: the paired ODE metric on a sub-sample of the fixed noise rows (eval.ode_samples)."""

import pytest
import torch

from multistep.config import EvalCfg
from multistep.data.gmm import GaussianMixture
from multistep.diffusion.schedules import make_schedule
from multistep.metrics.distances import paired_l2
from multistep.metrics.evaluate import _flat, bootstrap_se, evaluate, make_eval_ref
from multistep.nets.analytic import MixtureDenoiser

pytestmark = pytest.mark.usefixtures("one_thread")
GMM = GaussianMixture.random((4,), 3, 0.6, 0.2, seed=2)
COS = make_schedule("cosine")
TEACHER = MixtureDenoiser(GMM, COS)


def test_the_ode_metric_uses_the_first_rows_and_names_their_count():
    full = make_eval_ref(GMM, TEACHER, COS, 200, 16, seed=3)
    sub = make_eval_ref(GMM, TEACHER, COS, 200, 16, seed=3, ode_samples=50)
    assert sub.ode.shape == (50, 4) and torch.equal(torch.as_tensor(sub.ode), torch.as_tensor(full.ode[:50]))
    assert (sub.data == full.data).all() and torch.equal(
        sub.noise, full.noise
    )  # the rest of the reference is unchanged
    names = sub.names("identity")
    assert (
        names["ode"] == "ode_l2_50"
        and names["fd"] == "fd_identity_200"
        and full.names("identity")["ode"] == "ode_l2_200"
    )
    x = GMM.sample(200, torch.Generator().manual_seed(4), dtype=torch.float64)
    got = evaluate(x, sub, names)
    assert got["ode_l2_50"] == pytest.approx(paired_l2(_flat(x)[:50], full.ode[:50]))
    assert got["fd_identity_200"] == evaluate(x, full, full.names("identity"))["fd_identity_200"]
    se = bootstrap_se(x, sub, names, 20, seed=1)
    assert set(se) == {"fd_identity_200_se", "swd_200_se", "ode_l2_50_se"} and all(v > 0 for v in se.values())
    none = make_eval_ref(GMM, TEACHER, COS, 200, 16, seed=3, ode_samples=0)
    assert none.ode is None and "ode_l2_0" not in evaluate(x, none, none.names("identity"))


def test_ode_rows_default_to_at_most_two_thousand():
    assert [EvalCfg(samples=n).ode_rows for n in (500, 2000, 50000)] == [500, 2000, 2000]
    assert (
        EvalCfg(samples=500, ode_samples=100).ode_rows == 100
        and EvalCfg(samples=500, ode_samples=10**6).ode_rows == 500
    )


def test_mean_over_repeats_averages_matching_rows_and_keeps_the_first_only_rows():
    from multistep.metrics.evaluate import mean_over_repeats

    row = lambda m, v, **k: {"method": "teacher_ddim", "student_steps": 4, "nfe": 4, "metric": m, "value": v} | k
    first = [row("fd", 1.0, se=0.1), row("ode_l2", 0.5)]
    merged = mean_over_repeats([first, [row("fd", 2.0, se=0.3)], [row("fd", 6.0)]])
    assert merged == [row("fd", 3.0, se=0.1), row("ode_l2", 0.5)]  # (1 + 2 + 6) / 3; the ODE row only in the first
