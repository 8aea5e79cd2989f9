"""The performance benchmark's CPU path and the GPU fast paths (bf16 autocast, channels_last, compile) on CPU.

Speed goals live in the benchmark's output (docs/performance.md), never in these tests: they check that
every path runs and reports well-formed, positive figures, and that bf16 never reaches the targets.
"""

import json
import logging
import os

import pytest
import torch
from torch import nn

from multistep import bench
from multistep.cli import main
from multistep.train import perf

pytestmark = pytest.mark.usefixtures("one_thread")


def test_cpu_bench_end_to_end_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    rc = main(
        [
            "bench",
            "--size",
            "cpu",
            "--threads",
            "1",
            "--steps",
            "2",
            "--warmup",
            "1",
            "--batch",
            "4",
            "--sample-batch",
            "8",
            "--teacher-steps",
            "8",
            "--fd-dim",
            "48",
            "--peak-tflops",
            "2",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    res = json.loads(out.read_text())
    assert set(res) >= {"machine", "config", "training", "sampling", "teacher", "evaluation"}
    te = res["teacher"]  # the imported-teacher adapter against the bare network, same batch
    assert te["batch"] == 8 and te["bare_s"] > 0 and te["ratio"] == pytest.approx(te["adapter_s"] / te["bare_s"])
    tr = res["training"]
    for kind in ("diffusion", "mcd", "scd"):
        r = tr[kind]
        for key in ("step_s", "img_per_s", "tflops", "mfu", "peak_memory_bytes"):
            assert r[key] > 0, (kind, key)
        assert r["img_per_s"] == pytest.approx(4 / r["step_s"])
        assert r["mfu"] == pytest.approx(r["tflops"] / 2)
    assert tr["mcd_over_diffusion"] == pytest.approx(tr["mcd"]["step_s"] / tr["diffusion"]["step_s"])
    assert tr["flop_ideal_ratio"] == pytest.approx(5 / 3)
    assert tr["scd_over_diffusion"] == pytest.approx(tr["scd"]["step_s"] / tr["diffusion"]["step_s"])
    assert tr["forward_gflop_per_image"] > 0
    sa = res["sampling"]
    assert sa["teacher"]["img_per_s"] > 0
    assert sorted(sa["student"], key=int) == ["1", "2", "4", "8"]
    for S, r in sa["student"].items():
        assert r["img_per_s"] > 0 and r["speedup"] > 0
        assert r["goal"] == pytest.approx(0.9 * 8 / int(S))
    ev = res["evaluation"]
    assert ev["d"] == 48 and ev["frechet_s"] > 0 and ev["sqrtm_s"] > 0
    assert ev["relative_difference"] < 1e-6  # the two formulas agree
    printed = capsys.readouterr().out
    assert "MCD / diffusion step" in printed and "speedup" in printed and "through the adapter" in printed


def test_data_part_times_the_stream_with_and_without_its_reader_thread():
    from multistep.sweep.worker import PREFETCH_BATCHES

    r = bench.bench_data(rows=600, side=8, batch=32, batches=20, step_ms=1.0, rounds=1)
    assert set(r["wait_ms_per_batch"]) == {"0", str(PREFETCH_BATCHES)}
    assert all(v > 0 and len(r["all_wait_ms"][k]) == 1 for k, v in r["wait_ms_per_batch"].items())
    assert "the step waits" in bench.table(
        {
            "machine": {"cpu": "x"},
            "config": {"size": "cpu", "precision": "fp32", "compile": False, "channels_last": False},
            "data": r,
        }
    )


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


@pytest.mark.skipif(
    not os.environ.get("MULTISTEP_BIG_TESTS"), reason="~7 s of child processes: set MULTISTEP_BIG_TESTS=1"
)
def test_memory_part_measures_both_evaluators_in_child_processes():
    from multistep.bench.memory import bench_memory
    from multistep.bench.report import table

    res = bench_memory(300, ())  # (the in-memory runs share the child-process code path)
    [run] = res["runs"]
    assert (run["mode"], run["n"]) == ("stream", 300) and run["peak_bytes"] > 2**20 and run["fd"] > 0
    text = table(
        {
            "config": {"size": "cpu", "precision": "fp32", "compile": False, "channels_last": False},
            "machine": {"cpu": "x"},
            "memory": res,
        }
    )
    assert "streamed" in text and "N =    300" in text


def test_the_orchestration_timeline_reads_the_sweeps_own_progress_lines(caplog):
    """bench's trial timeline parses what sweep/progress.py prints (a format change broke it once)."""
    from multistep.bench.orchestration import trial_events
    from multistep.sweep.progress import TrialProgress

    caplog.set_level(logging.INFO, logger="multistep")
    p = TrialProgress(2, live=False)
    p.started(0, "mcd S=1", 10, " (a)")
    p.started(1, "mcd S=2", 10, " (b)")
    p.result(0, 5, 0.3)
    p.ended(1, "FAILED after 3 s: boom")
    p.ended(0, "finished in 9 s")
    said = [(float(i), m) for i, m in enumerate(caplog.messages)]  # the n-th line at time n
    assert trial_events(said) == ({0: 0.0, 1: 1.0}, {1: 3.0, 0: 4.0})
