"""Trained teachers (train/teacher.py): a digits teacher's FD falls with steps, checkpoints round-trip and bad files
are refused, label embeddings train (`multistep teacher` end to end: tests/unit/sweep/test_teacher_job.py)."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from multistep.data.digits import batches, load_digits
from multistep.diffusion.samplers import ddim_sample
from multistep.diffusion.schedules import make_schedule
from multistep.metrics.frechet import frechet_distance, gaussian_stats
from multistep.nets.mlp import VDenoiser
from multistep.nets.unet import UNet
from multistep.train.teacher import load_teacher, save_teacher, train_teacher

pytestmark = pytest.mark.usefixtures("one_thread_module")


STEPS = (1, 2, 4, 8, 16, 64)
TINY = dict(
    kind="unet", in_ch=1, base_ch=8, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(), resolution=8, time_dim=32
)


@pytest.fixture(scope="module")
def digits_teacher():
    x, _ = load_digits()
    sched = make_schedule("cosine")
    cfg = dict(TINY)
    net = UNet(**{k: v for k, v in cfg.items() if k != "kind"})
    t0 = time.perf_counter()
    net, ema, hist = train_teacher(
        net, sched, batches(x, None, 128, seed=0), iterations=300, lr=3e-3, ema=0.99, seed=0, log_every=100
    )
    return cfg, net, ema, hist, time.perf_counter() - t0, sched, x


def test_digits_teacher_curve_falls_with_steps(digits_teacher):
    cfg, net, ema, hist, seconds, sched, x = digits_teacher
    assert len(hist) == 3 and hist[-1]["loss"] < hist[0]["loss"]
    f = VDenoiser(ema, sched)
    mu, cov = gaussian_stats(x.reshape(len(x), -1).numpy())
    noise = torch.randn(500, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    fd = {}
    for n in STEPS:
        s, nfe = ddim_sample(f, sched, noise, n)
        assert nfe == n and s.shape == noise.shape
        fd[n] = frechet_distance(*gaussian_stats(s.reshape(len(s), -1).numpy()), mu, cov)
    print(
        f"\ndigits teacher ({sum(p.numel() for p in ema.parameters())} params, 300 it, {seconds:.1f} s): "
        + ", ".join(f"FD@{n}={v:.2f}" for n, v in fd.items())
    )
    assert all(np.isfinite(list(fd.values())))
    assert fd[2] < fd[1] and fd[4] < fd[2] and fd[16] < fd[1] / 3 and fd[64] < fd[1] / 3


def test_teacher_checkpoint_round_trip_and_bad_files(digits_teacher, tmp_path):
    cfg, _, ema, _, _, sched, _ = digits_teacher
    p = save_teacher(
        tmp_path / "t" / "teacher.pt", cfg, ema.state_dict(), meta={"schedule": "cosine", "data": "digits"}
    )
    assert not list(p.parent.glob(".*tmp"))
    net, info = load_teacher(p)
    z, t = torch.randn(4, 1, 8, 8), torch.rand(4)
    assert torch.equal(net(z, t), ema(z, t)) and info["meta"]["data"] == "digits" and info["net"]["base_ch"] == 8
    assert not any(q.requires_grad for q in net.parameters()) and not net.training

    truncated = tmp_path / "trunc.pt"
    truncated.write_bytes(p.read_bytes()[:200])
    other = save_teacher(
        tmp_path / "other.pt", {**cfg, "base_ch": 4}, ema.state_dict()
    )  # weights do not fit the config
    blob = torch.load(p, weights_only=True)
    newer = tmp_path / "v9.pt"
    torch.save({**blob, "version": 9}, newer)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": blob["state"]}, foreign)
    for f, match in (
        (truncated, "not a readable"),
        (other, "incompatible"),
        (newer, "version 9"),
        (foreign, "not a multistep teacher"),
        (tmp_path / "missing.pt", "not found"),
    ):
        with pytest.raises(ValueError, match=match) as e:
            load_teacher(f)
        assert f.name in str(e.value)


def test_conditional_teacher_trains_label_embedding():
    x, y = load_digits()
    net = UNet(1, 4, (1,), 1, (), 8, 0.0, num_classes=10, time_dim=8)
    before = net.label_emb.weight.detach().clone()
    logged = []
    net, ema, hist = train_teacher(
        net,
        make_schedule("cosine"),
        batches(x, y, 32, seed=1),
        iterations=20,
        lr=1e-3,
        seed=0,
        log=lambda it, m: logged.append(it),
        label_dropout=0.5,
        log_every=10,
    )
    assert logged == [10, 20] and all(np.isfinite(h["loss"]) for h in hist)
    changed = (net.label_emb.weight - before).abs().sum(1) > 0
    assert changed[:10].any() and changed[10]  # real classes and the null class (CFG dropout) both learn
    assert not torch.equal(ema.label_emb.weight, net.label_emb.weight)  # EMA lags the online weights
