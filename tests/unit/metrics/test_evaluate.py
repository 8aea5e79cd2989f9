"""metrics/evaluate.py: the paired ODE metric on a sub-sample of the fixed noise rows (eval.ode_samples), cls_err of
conditional samples, and eval.prompts cycled over the noise rows by both reference builders."""

import numpy as np
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


def test_cls_err_counts_samples_off_their_conditioning_label():
    import torch

    from multistep.metrics.evaluate import EvalRef, LabelChecks, evaluate, metric_names

    ref = EvalRef(np.random.default_rng(0).normal(size=(4, 2)), torch.zeros(4, 2), None, {}, torch.tensor([0, 1, 1, 0]))
    names = metric_names(4, "classifier", labelled=True)
    assert names["cls_err"] == "cls_err_4" and "cls_err" not in metric_names(4, "classifier")
    out = evaluate(np.array([[1.0, 0], [0, 1], [1, 0], [1, 0]]), ref, names, checks=LabelChecks(lambda f: f.argmax(1)))
    assert out["cls_err_4"] == 0.25 and "ode_l2_4" not in out  # predicted 0, 1, 0, 0 against 0, 1, 1, 0


def test_fixed_prompts_cycle_over_the_noise_rows_in_memory_and_streamed():
    """eval.prompts: row i is conditioned on prompts[i mod len], in both reference builders (no labels drawn)."""
    import torch

    from multistep.data.kinds import ImageData
    from multistep.metrics.evaluate import make_eval_ref
    from multistep.metrics.streaming import make_stream_ref

    data = ImageData(torch.rand(20, 1, 4, 4) * 2 - 1, torch.arange(20) % 5, captions=[str(i) for i in range(5)])
    teacher = lambda z, t, y=None: 0 * z
    from multistep.diffusion.schedules import make_schedule

    sched = make_schedule("cosine")
    for make in (make_eval_ref, make_stream_ref):
        ref = make(data, teacher, sched, 7, 2, 0, "pixel", True, ode_samples=0, prompts=torch.tensor([4, 1, 3]))
        assert ref.labels.tolist() == [4, 1, 3, 4, 1, 3, 4], make.__name__


def test_bootstrap_standard_error_is_seeded_and_shrinks_with_samples():
    import torch

    from multistep.metrics.evaluate import EvalRef, bootstrap_se, metric_names

    rng = np.random.default_rng(0)

    def se(n, seed=0):
        data, gen = rng.standard_normal((n, 4)), rng.standard_normal((n, 4)) * 1.1 + 0.1
        ref = EvalRef(data, torch.zeros(n, 4), gen + 0.05 * rng.standard_normal((n, 4)), {})
        return bootstrap_se(gen, ref, metric_names(n), 40, seed)

    small, large = se(300), se(2400)
    assert set(small) == {"fd_identity_300_se", "swd_300_se", "ode_l2_300_se"}
    assert all(v > 0 for v in small.values())
    for k in ("fd_identity", "swd", "ode_l2"):  # 8x the samples: about sqrt(8) = 2.8x smaller
        ratio = small[f"{k}_300_se"] / large[f"{k}_2400_se"]
        assert 1.5 < ratio < 5.0, (k, ratio)
    rng = np.random.default_rng(1)
    a = se(300, seed=3)
    rng = np.random.default_rng(1)
    assert se(300, seed=3) == a  # same data, same seed: the same numbers
