"""metrics/streaming.py: the streaming evaluator equals evaluate() on the same draws held in memory, for any
batch size, with labels, the classifier's cls_err, KID's subsets, the sub-sampled ODE rows and a reference file."""

import numpy as np
import pytest
import torch

from multistep.data.gmm import GaussianMixture
from multistep.diffusion.samplers import ddim_sample
from multistep.diffusion.schedules import make_schedule
from multistep.metrics import streaming as st
from multistep.metrics.evaluate import EvalRef, evaluate
from multistep.metrics.frechet import gaussian_stats
from multistep.metrics.paired import fd
from multistep.metrics.reference import Reference
from multistep.nets.analytic import MixtureDenoiser

pytestmark = pytest.mark.usefixtures("one_thread")
GMM = GaussianMixture.random((5,), 3, 0.6, 0.2, seed=2)
COS = make_schedule("cosine")
TEACHER = MixtureDenoiser(GMM, COS)
N, SEED, K = 2500, 7, 300  # three draw chunks; ODE on the first 300 rows


def in_memory(reference=None) -> EvalRef:
    """The streaming protocol's draws, materialised: what evaluate() compares with."""
    data = st.data_rows(GMM, SEED, st.STREAM_DATA, 0, N)
    noise = st.noise_rows(SEED, (5,), 0, N)
    ode = st._flat(ddim_sample(TEACHER, COS, noise[:K].double(), 8)[0])
    return EvalRef(data, noise, ode, {}, None, None, reference)


def samples(noise: torch.Tensor) -> torch.Tensor:
    return ddim_sample(TEACHER, COS, noise.double(), 4)[0]  # a 4-step teacher as the "student"


@pytest.mark.parametrize("batch", [256, 1000])
def test_streaming_equals_in_memory(batch):
    ref = st.make_stream_ref(GMM, TEACHER, COS, N, 8, SEED, kid_subsets=5, ode_samples=K, batch=batch)
    mem = in_memory()
    names = ref.names("identity")
    assert names == mem.names("identity") and names["ode"] == "ode_l2_300"
    evaluations = lambda y, seed: [("t4", 4, lambda z: (samples(z), 4))]
    [(label, steps, point, nfe)] = st.stream_points(evaluations, ref, names, batch)
    got, want = point.result(), evaluate(samples(mem.noise), mem, names, kid_subsets=5)
    assert set(got) == set(want) and (label, steps, nfe) == ("t4", 4, 4)
    for k in want:
        assert got[k] == pytest.approx(want[k], rel=1e-9, abs=1e-12), k
    other = st.data_rows(GMM, SEED, st.STREAM_OTHER, 0, N)
    floor = evaluate(other, mem, names, kid_subsets=5)
    assert ref.floor[names["fd"]] == pytest.approx(floor[names["fd"]], rel=1e-9)
    assert ref.floor[names["kid"]] == pytest.approx(floor[names["kid"]], rel=1e-9) and ref.floor[names["ode"]] == 0.0
    assert torch.equal(ref.head(1000).noise, mem.noise[:1000]) and point.samples_for_grid().shape == (64, 5)


def test_streaming_against_a_reference_file_and_with_labels():
    mem = in_memory()
    mu, sigma = gaussian_stats(mem.data)
    stats = Reference(mu + 0.1, sigma, None, "x" * 64)  # a stats-only reference, shifted: KID is skipped
    ref = st.make_stream_ref(GMM, TEACHER, COS, N, 8, SEED, kid_subsets=5, ode_samples=K, reference=stats, batch=700)
    mem.reference = stats
    names = ref.names("identity")
    evaluations = lambda y, seed: [("t4", 4, lambda z: (samples(z), 4))]
    [(_, _, point, _)] = st.stream_points(evaluations, ref, names, 512)
    got, want = point.result(), evaluate(samples(mem.noise), mem, names, kid_subsets=5)
    assert names["kid"] not in got and got[names["fd"]] == pytest.approx(want[names["fd"]], rel=1e-9)


def test_labels_are_drawn_by_chunks_too():
    class Labelled:
        shape = (5,)

        def sample(self, n, g, dtype=torch.float32):
            return self.sample_labelled(n, g, dtype)[0]

        def sample_labelled(self, n, g, dtype=torch.float32):
            return torch.randn(n, 5, generator=g, dtype=dtype), torch.randint(0, 3, (n,), generator=g)

    a = st.label_rows(Labelled(), 1, 0, 3000)
    assert torch.equal(a[1500:2500], st.label_rows(Labelled(), 1, 1500, 2500)) and set(a.tolist()) == {0, 1, 2}
    assert np.array_equal(st.data_rows(GMM, 1, 1, 900, 1100), st.data_rows(GMM, 1, 1, 0, 2000)[900:1100])


def test_a_sweep_trial_evaluates_by_streaming(tmp_path):
    """eval.stream: on through the sweep's own code: the shared assets (reference, teacher curve) and the trial's
    final evaluation (metrics/evaluator.final_points) stream, and give what the same draws give in memory."""
    from multistep.config import TrialCfg
    from multistep.metrics.evaluator import final_points
    from multistep.sweep.assets import prepare
    from multistep.train.build import build

    doc = {
        "data": {"kind": "gmm", "shape": [5], "components": 3, "mean_std": 0.6, "component_std": 0.2, "seed": 2},
        "student": {"init_iterations": 0},
        "eval": {
            "samples": N,
            "teacher_steps": [2],
            "ode_steps": 8,
            "ode_samples": K,
            "seed": SEED,
            "kid_subsets": 5,
            "stream": "on",
            "batch_size": 600,
        },
    }
    tc = TrialCfg.model_validate(doc)
    a = prepare(tc, tmp_path / "cache")
    ref = st.load_ref(a["eval_ref"])
    assert isinstance(ref, st.StreamRef) and {r["method"] for r in a["teacher_rows"]} == {
        "teacher_ddim",
        "teacher_addim",
    }
    c = build(tc)
    names = ref.names("identity")
    evaluations = lambda y, seed: [("t4", 4, lambda z: (ddim_sample(c.teacher, c.schedule, z.double(), 4)[0], 4))]
    [(label, steps, x, metrics, nfe, _)] = final_points(
        evaluations, ref, names, tc.eval, "cpu", lambda x: None, None, 0
    )
    mem = in_memory()
    want = evaluate(samples(mem.noise), mem, names, kid_subsets=5)
    assert metrics[names["fd"]] == pytest.approx(want[names["fd"]], rel=1e-9) and x.shape == (64, 5)
    assert a["eval_ref"]["stream"] and "data" not in a["eval_ref"]  # nothing of size N x sample is shipped


def test_the_streamed_teacher_curve_is_the_same_for_any_batch():
    """The shared assets sample the teacher curve in eval.batch_size rows (fewer, larger teacher calls than CHUNK).
    4 and 8 steps: 1-step DDIM samples nearly collapse, and their FD turns float64 rounding of the accumulation
    order into ~1e-8."""
    ref = st.make_stream_ref(GMM, TEACHER, COS, N, 8, SEED, kid_subsets=5, ode_samples=K)
    (small, _), (large, kept) = (
        st.stream_teacher_curve(TEACHER, COS, GMM, ref, [4, 8], kid_subsets=5, batch_size=b, keep=k)
        for b, k in ((256, 0), (1000, N))
    )
    assert len(small) == len(large) > 0
    for a, b in zip(small, large):
        assert {k: v for k, v in a.items() if k != "value"} == {k: v for k, v in b.items() if k != "value"}
        assert a["value"] == pytest.approx(b["value"], rel=1e-9, abs=1e-12), a
    # every point keeps its rows (eval.keep_rows, for `multistep claims`): the FD recomputed from them is the logged one
    assert set(kept) == {"teacher_ddim_4", "teacher_ddim_8", "teacher_addim_4", "teacher_addim_8"}
    data = st.data_rows(GMM, SEED, st.STREAM_DATA, 0, N)
    logged = {
        (r["method"], r["student_steps"]): r["value"] for r in large if r["metric"] == ref.names("identity")["fd"]
    }
    for name, rows in kept.items():
        label, _, n = name.rpartition("_")
        assert rows.shape == (N, 5) and rows.dtype == np.float32
        assert fd(rows.astype(np.float64), data) == pytest.approx(logged[(label, int(n))], rel=1e-4)
