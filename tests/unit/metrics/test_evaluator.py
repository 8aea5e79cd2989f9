"""metrics/evaluator.py: the final evaluation of a trial with eval.repeats evaluates every point from K noise seeds (mean, std)."""

import numpy as np
import pytest
import torch

from multistep.config import EvalCfg
from multistep.data.gmm import GaussianMixture
from multistep.diffusion.samplers import ddim_sample
from multistep.diffusion.schedules import make_schedule
from multistep.metrics.evaluate import evaluate, make_eval_ref
from multistep.metrics.evaluator import final_points
from multistep.nets.analytic import MixtureDenoiser

pytestmark = pytest.mark.usefixtures("one_thread")
GMM = GaussianMixture.random((4,), 3, 0.6, 0.2, seed=2)
COS = make_schedule("cosine")
TEACHER = MixtureDenoiser(GMM, COS)


def test_repeats_report_the_mean_and_std_over_noise_seeds():
    ref = make_eval_ref(GMM, TEACHER, COS, 400, 8, seed=3)
    names = ref.names("identity")
    ev = EvalCfg(samples=400, repeats=3, seed=3, kid_subsets=0)
    sampler = lambda z: (ddim_sample(TEACHER, COS, z.double(), 2)[0], 2)
    [(_, _, x, metrics, _, _)] = final_points(
        lambda y, s: [("t2", 2, sampler)], ref, names, ev, "cpu", lambda x: None, None, 0
    )
    per_seed = [evaluate(sampler(ref.with_noise_seed(r, 3).noise)[0], ref, names)[names["fd"]] for r in range(3)]
    assert metrics[names["fd"]] == pytest.approx(np.mean(per_seed)) and metrics[
        f"{names['fd']}_repeat_std"
    ] == pytest.approx(np.std(per_seed, ddof=1))
    assert len(set(per_seed)) == 3  # three different noises
    assert metrics[names["ode"]] == evaluate(x, ref, names)[names["ode"]]  # the paired error: the reference's own noise
    assert torch.equal(ref.with_noise_seed(0, 3).noise, ref.noise)
