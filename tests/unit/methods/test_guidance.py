"""Classifier-free guidance distillation (algorithms.md §3.3, §4.7, A13): guided teacher step, xvar from the
conditional output, label plumbing through the MCM loss, conditional evaluation references, and bad input."""

from __future__ import annotations

import pytest
import torch
import yaml

from multistep.diffusion.ddim import addim_step
from multistep.diffusion.samplers import ddim_sample, mcm_sample
from multistep.diffusion.schedules import make_schedule
from multistep.methods.base import conditioned, per_example_mean
from multistep.methods.mcm import MCM
from multistep.nets.mlp import VDenoiser
from multistep.nets.unet import UNet

F64 = torch.float64
COS = make_schedule("cosine")
K = 3  # classes of the tiny net; id K is the null class

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_unet(seed=0, classes=K) -> UNet:
    """A conditional UNet whose zero-initialised output layers are perturbed, so that classes really differ."""
    torch.manual_seed(seed)
    net = UNet(base_ch=4, ch_mult=(1,), time_dim=8, num_classes=classes)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return net


def inputs(B=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((B, 1, 8, 8), generator=g, dtype=F64) * 2 - 1
    y = torch.randint(0, K, (B,), generator=g)
    t = torch.rand(B, generator=g, dtype=F64) * 0.8 + 0.1
    s = t - 0.05
    a, sig = COS.alpha_sigma(t)
    z = a.reshape(-1, 1, 1, 1) * x + sig.reshape(-1, 1, 1, 1) * torch.randn(x.shape, generator=g, dtype=F64)
    return x, y, z, t, s


@pytest.mark.parametrize("w", [0.5, 2.0])
def test_guided_teacher_step_is_the_formula(w):
    teacher = VDenoiser(tiny_unet().eval(), COS)
    x, y, z, t, s = inputs()
    z_s, x_tch, xvar = MCM(COS, 2, teacher=teacher, guidance=w, xvar_frac=0.75).teacher_step(x, z, t, s, y)
    with torch.no_grad():
        x_c = teacher(z, t, y)  # conditional
        x_u = teacher(z, t, torch.full_like(y, K))  # the null class, named explicitly
    assert not torch.allclose(x_c, x_u, atol=1e-3)  # the labels matter for this net
    x_g = x_c + w * (x_c - x_u)  # x_g = x_c + w (x_c - x_u)
    torch.testing.assert_close(x_tch, x_g, rtol=0, atol=1e-12)
    xvar_c = 0.75 * per_example_mean((x_c - x) ** 2)
    torch.testing.assert_close(z_s, addim_step(COS, x_g, z, t, s, xvar_c), rtol=0, atol=1e-12)


def test_xvar_uses_the_conditional_output():
    """A13: xvar from the unguided x_c. Using the guided x_g instead gives other numbers (checked to differ)."""
    teacher = VDenoiser(tiny_unet().eval(), COS)
    x, y, z, t, s = inputs()
    m = MCM(COS, 2, teacher=teacher, guidance=3.0, xvar_frac=0.75)
    z_s, x_g, xvar = m.teacher_step(x, z, t, s, y)
    with torch.no_grad():
        x_c = teacher(z, t, y)
    from_cond, from_guided = 0.75 * per_example_mean((x_c - x) ** 2), 0.75 * per_example_mean((x_g - x) ** 2)
    assert (from_cond - from_guided).abs().min() > 1e-4 * from_cond.max()  # the two candidates differ
    torch.testing.assert_close(xvar, from_cond, rtol=0, atol=1e-14)
    wrong = addim_step(COS, x_g, z, t, s, from_guided)
    assert (z_s - wrong).abs().max() > 1e-6


def test_guidance_zero_is_the_conditional_loss_exactly():
    """w = 0: the labelled loss equals the pre-guidance code path run on teacher and student bound to the labels."""
    teacher = VDenoiser(tiny_unet(0).eval(), COS)
    student = VDenoiser(tiny_unet(1).train(), COS)
    x, y, *_ = inputs(B=16)
    kw = dict(anneal="constant", anneal_params={"n": 8})
    loss, _ = MCM(COS, 2, teacher=teacher, guidance=0.0, **kw).loss(
        student, (x, y), 0, 10, torch.Generator().manual_seed(3)
    )
    bound = MCM(COS, 2, teacher=conditioned(teacher, y), **kw)
    ref, _ = bound.loss(conditioned(student, y), x, 0, 10, torch.Generator().manual_seed(3))
    assert torch.equal(loss, ref)
    guided, _ = MCM(COS, 2, teacher=teacher, guidance=1.0, **kw).loss(
        student, (x, y), 0, 10, torch.Generator().manual_seed(3)
    )
    assert not torch.allclose(guided, loss)  # guidance changes the target
    uncond, _ = MCM(COS, 2, teacher=teacher, **kw).loss(student, x, 0, 10, torch.Generator().manual_seed(3))
    assert not torch.allclose(uncond, loss)  # and the labels reach the nets


def test_student_is_conditioned_on_the_batch_labels():
    """The student sees the batch's labels, never the null class (it is not guided): only those embedding rows learn."""
    teacher = VDenoiser(tiny_unet(0).eval(), COS)
    student = VDenoiser(tiny_unet(1).train(), COS)
    x, _, *_ = inputs(B=16)
    y = torch.tensor([0, 1] * 8)
    loss, _ = MCM(COS, 1, teacher=teacher, guidance=2.0, anneal="constant", anneal_params={"n": 8}).loss(
        student, (x, y), 0, 10, torch.Generator().manual_seed(4)
    )
    loss.backward()
    g = student.net.label_emb.weight.grad.abs().sum(1)
    assert g[0] > 0 and g[1] > 0 and g[2] == 0 and g[K] == 0


def test_conditional_evaluation_uses_the_fixed_labels():
    net = VDenoiser(tiny_unet().eval(), COS)
    noise = torch.randn((5, 1, 8, 8), generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 0, 1])
    ((_, _, sampler),) = MCM(COS, 2, teacher=net).evaluations(net, y)
    x, nfe = sampler(noise)
    assert nfe == 2 and torch.equal(x, mcm_sample(conditioned(net, y), COS, noise, 2)[0])
    assert not torch.allclose(x, mcm_sample(net, COS, noise, 2)[0])


def test_batched_evaluation_keeps_each_row_with_its_label():
    """sample_points in chunks of 2 rows (each with its own labels) gives the one-batch samples, row for row."""
    from multistep.metrics.evaluate import sample_points

    net = VDenoiser(tiny_unet().eval(), COS)
    noise = torch.randn((5, 1, 8, 8), generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 0, 1])
    method = MCM(COS, 2, teacher=net)
    ((label, steps, x, nfe),) = sample_points(lambda yy, s: method.evaluations(net, yy, s), noise, y, batch_size=2)
    assert (steps, nfe) == (2, 2) and x.shape == noise.shape
    torch.testing.assert_close(x, mcm_sample(conditioned(net, y), COS, noise, 2)[0], rtol=1e-5, atol=1e-6)


def test_batched_cm_sampler_draws_fresh_noise_per_batch():
    """The CM stochastic sampler in batches of 2: rows with the same starting noise in different batches get
    different injected noise (a batch's seed is its first row's index), and the result is reproducible."""
    from multistep.metrics.evaluate import sample_points

    net = VDenoiser(tiny_unet().eval(), COS)
    method = MCM(COS, 1, teacher=net, cm_sampler_steps=(2,))
    noise = torch.randn((2, 1, 8, 8), generator=torch.Generator().manual_seed(0)).repeat(2, 1, 1, 1)  # rows 0,1 = 2,3
    run = lambda: {lb: x for lb, _, x, _ in sample_points(lambda y, s: method.evaluations(net, y, s), noise, None, 2)}
    out = run()
    torch.testing.assert_close(out["mcd"][:2], out["mcd"][2:])  # deterministic one-step map
    assert not torch.allclose(out["mcd_cm_sampler"][:2], out["mcd_cm_sampler"][2:])  # not the same noise twice
    torch.testing.assert_close(run()["mcd_cm_sampler"], out["mcd_cm_sampler"])


def _save(tmp_path, name, num_classes):
    from multistep.train.teacher import save_teacher

    net_cfg = {"kind": "unet", "base_ch": 4, "ch_mult": [1], "time_dim": 8, "num_classes": num_classes}
    net = tiny_unet(0, num_classes) if num_classes else UNet(base_ch=4, ch_mult=(1,), time_dim=8)
    return save_teacher(
        tmp_path / name, net_cfg, net.state_dict(), {"schedule": {"name": "cosine"}, "shape": [1, 8, 8]}
    )


def _trial(path, **method):
    from multistep.config import TrialCfg

    return TrialCfg.model_validate(
        {
            "data": {"kind": "digits"},
            "teacher": {"kind": "checkpoint", "path": str(path)},
            "method": method,
            "train": {"batch_size": 32},
            "eval": {"samples": 200, "teacher_steps": [1, 2], "ode_steps": 8, "seed": 5},
        }
    )


def test_eval_reference_labels_and_cache_key(tmp_path):
    from multistep.metrics.evaluate import EvalRef, make_eval_ref
    from multistep.sweep.assets import prepare
    from multistep.train.build import build

    cond, plain = _save(tmp_path, "cond.pt", 10), _save(tmp_path, "plain.pt", None)
    c = build(_trial(cond))
    r1 = make_eval_ref(c.data, c.teacher, c.schedule, 300, 8, seed=7, extractor="pixel", labelled=True)
    r2 = make_eval_ref(c.data, c.teacher, c.schedule, 300, 8, seed=7, extractor="pixel", labelled=True)
    r0 = make_eval_ref(c.data, c.teacher, c.schedule, 300, 8, seed=7, extractor="pixel")
    assert r0.labels is None and torch.equal(r1.labels, r2.labels)  # fixed by the seed
    assert (r1.data == r0.data).all() and torch.equal(r1.noise, r0.noise)  # same data sample and noise as before
    counts = torch.bincount(r1.labels, minlength=10)
    assert counts.sum() == 300 and (counts > 10).all()  # digits' 10 roughly balanced classes
    ode = ddim_sample(conditioned(c.teacher, r1.labels), c.schedule, r1.noise.double(), 8)[0]
    assert torch.allclose(torch.as_tensor(r1.ode), ode.reshape(300, -1))  # the conditional teacher's ODE
    assert not torch.allclose(torch.as_tensor(r0.ode), ode.reshape(300, -1))
    back = EvalRef.from_dict(r1.to_dict())
    assert torch.equal(back.labels, r1.labels) and torch.equal(back.head(10).labels, r1.labels[:10])

    a = prepare(_trial(cond), tmp_path / "cache")
    b = prepare(_trial(plain), tmp_path / "cache")
    assert a["eval_ref"]["labels"] is not None and b["eval_ref"]["labels"] is None
    assert a["eval_ref_hash"] != b["eval_ref_hash"]
    again = prepare(_trial(cond), tmp_path / "cache")  # from the cache: the same labels
    assert (again["eval_ref"]["labels"] == a["eval_ref"]["labels"]).all()


def test_unconditional_teacher_with_guidance_exits_2(ray_local, tmp_path, capsys):
    """Only the checkpoint knows whether the teacher is conditional: the driver checks every trial before training
    (while Ray starts beside it: ray_local keeps this test from starting a second instance in the test process)."""
    from multistep.cli import main

    plain = _save(tmp_path, "plain.pt", None)
    doc = {
        "name": "g",
        "experiment": "g",
        "data": {"kind": "digits"},
        "teacher": {"kind": "checkpoint", "path": str(plain)},
        "eval": {"samples": 50, "teacher_steps": [1], "ode_steps": 4},
        "search": {"method.guidance": {"grid": [0, 1]}},
    }
    f = tmp_path / "g.yaml"
    f.write_text(yaml.safe_dump(doc))
    rc = main(["sweep", str(f), "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}", "--storage", str(tmp_path / "rr")])
    err = [
        line for line in capsys.readouterr().err.splitlines() if line.startswith("multistep:")
    ]  # (MLflow logs its own lines)
    assert (
        rc == 2 and len(err) == 1 and str(f) in err[0] and "method.guidance: 1 needs a class-conditional" in err[0]
    ), err
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'm.db'}")
    runs = client.search_runs([client.get_experiment_by_name("g").experiment_id])
    status = sorted(
        (r.data.tags["multistep.kind"], r.info.status) for r in runs
    )  # the runs opened before the check are closed
    assert status == [("sweep", "FAILED"), ("trial", "KILLED"), ("trial", "KILLED")], status


@pytest.mark.slow
def test_guidance_sweep_axis_end_to_end(ray_local, tmp_path, monkeypatch):
    """A real sweep (Ray Tune, sqlite MLflow) over method.guidance with a conditional teacher: both trials
    train on labelled batches, are evaluated on the reference's fixed labels, and get their own curve; FD and KID
    are measured in the features of a digits classifier the driver trains once and ships to the trials."""
    from mlflow.tracking import MlflowClient

    from multistep.config import load_sweep
    from multistep.sweep.driver import run_sweep

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "unset")  # run_sweep sets it; restored after the test
    cond = _save(tmp_path, "cond.pt", 10)
    doc = {
        "name": "tiny-guidance",
        "experiment": "tests-guidance",
        "data": {"kind": "digits"},
        "teacher": {"kind": "checkpoint", "path": str(cond)},
        "method": {"name": "mcm", "student_steps": 2, "anneal": {"name": "constant", "n": 8}},
        "train": {"iterations": 20, "batch_size": 32, "log_every": 10, "checkpoint_every": 20},
        "eval": {"samples": 200, "teacher_steps": [2], "ode_steps": 8, "extractor": "classifier"},
        "resources": {"max_concurrent_trials": 2},
        "search": {"method.guidance": {"grid": [0, 1.5]}},
    }
    f = tmp_path / "sweep.yaml"
    f.write_text(yaml.safe_dump(doc, sort_keys=False))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert run_sweep(load_sweep(f), uri, str(tmp_path / "rr")) == 0
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("tests-guidance").experiment_id])
    trials = sorted(
        (r for r in runs if r.data.tags.get("multistep.kind") == "trial"),
        key=lambda r: int(r.data.tags["multistep.trial_index"]),
    )
    (sweep_run,) = [r for r in runs if r.data.tags.get("multistep.kind") == "sweep"]
    assert [t.info.status for t in trials] == ["FINISHED", "FINISHED"]
    fds = [client.get_metric_history(t.info.run_id, "fd_classifier_200") for t in trials]
    assert all(len(h) == 1 and h[0].step == 2 and h[0].value > 0 for h in fds)
    assert fds[0][0].value != fds[1][0].value  # same seed and start: only guidance differs
    assert all(
        "proxy_fd_classifier_200" in t.data.metrics and "kid_classifier_200_se" in t.data.metrics for t in trials
    )
    errs = [t.data.metrics["cls_err_200"] for t in trials]  # class-aware: samples off their label
    assert all(0 <= e <= 1 for e in errs)
    for t, label in zip(trials, ("mcd", "mcd_cfg1.5")):  # an 8x8 sample grid per trial and step count
        assert [a.path for a in client.list_artifacts(t.info.run_id, "samples")] == [f"samples/{label}_2steps.png"]
    for label in ("mcd", "mcd_cfg1.5"):  # a curve per guidance scale in the sweep run
        (pt,) = client.get_metric_history(sweep_run.info.run_id, f"fd_classifier_200/{label}")
        assert pt.step == 2
    import pyarrow.parquet as pq

    (table,) = (tmp_path / "rr").glob("*/results.parquet")
    kid_rows = [r for r in pq.read_table(table).to_pylist() if r["metric"] == "kid_classifier_200"]
    assert {r["method"] for r in kid_rows} == {"mcd", "mcd_cfg1.5", "teacher_ddim", "teacher_addim"}
    assert all(r["se"] > 0 for r in kid_rows)  # KID's standard error fills the se column
