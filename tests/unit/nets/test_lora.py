"""LoRA students (nets/lora.py): adapters on the student's copy of a checkpoint teacher; the student starts equal to
the teacher, only the adapters change, only they are in the trial checkpoint, and a resumed trial continues bit
for bit."""

import copy

import torch

from multistep.config import TrialCfg
from multistep.train.build import build, make_method
from multistep.train.loop import Hooks, fit, new_state
from multistep.train.teacher import build_net, save_teacher

NET = {
    "kind": "unet",
    "in_ch": 1,
    "resolution": 8,
    "base_ch": 8,
    "ch_mult": [1, 2],
    "attn_resolutions": [4],
    "time_dim": 8,
}


def trial(tmp_path) -> TrialCfg:
    torch.manual_seed(0)
    net = build_net(NET)
    with torch.no_grad():  # zero-initialised output layers would make every adapter's gradient 0
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    meta = {"name": "t", "schedule": {"name": "cosine", "params": {}}, "data": {"kind": "digits"}, "shape": [1, 8, 8]}
    path = save_teacher(tmp_path / "teacher.pt", NET, net.state_dict(), meta)
    return TrialCfg.model_validate(
        {
            "data": {"kind": "digits"},
            "teacher": {"kind": "checkpoint", "path": str(path)},
            "student": {"lora": {"rank": 2, "alpha": 4, "target_modules": ["qkv", "proj"]}},
            "method": {"name": "mcm", "student_steps": 2},
        }
    )


def fresh(tc):
    c = build(tc)
    m = make_method(tc, c)
    return c, m, new_state(c.student, 1e-2, 0, m)


def test_only_the_adapters_train_and_travel_in_checkpoints(tmp_path):
    tc = trial(tmp_path)
    c, m, a = fresh(tc)
    names = [n for n, p in c.student.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names) and any(".qkv." in n for n in names)
    z, t = torch.randn(4, 1, 8, 8, dtype=torch.float64), torch.full((4,), 0.6, dtype=torch.float64)
    assert torch.equal(c.student(z, t), c.teacher(z, t))  # B = 0: the student starts as the teacher
    frozen = {n: p.detach().clone() for n, p in c.student.named_parameters() if not p.requires_grad}
    saved = {}
    sample = lambda g: c.data.sample(16, g)
    fit(a, m, sample, 6, 1.0, 0.9, 3, 3, Hooks(checkpoint=lambda it, sd: saved.setdefault(it, copy.deepcopy(sd))))
    assert not torch.equal(c.student(z, t), c.teacher(z, t))  # the adapters moved it
    assert all(torch.equal(p, frozen[n]) for n, p in c.student.named_parameters() if n in frozen)
    sd = saved[3]
    assert set(sd["student"]) == set(sd["ema"]) == set(names)  # adapters only: no base weight, no buffer
    cb, mb, b = fresh(tc)  # a restarted trial: the teacher's copy again, then its adapters from the checkpoint
    b.load_state_dict(sd)
    fit(b, mb, lambda g: cb.data.sample(16, g), 6, 1.0, 0.9, 3, 3)
    for x, y in ((a.student, b.student), (a.ema, b.ema)):
        assert all(torch.equal(p, q) for p, q in zip(x.state_dict().values(), y.state_dict().values()))


def test_merging_the_adapters_gives_the_plain_network_with_the_same_outputs(tmp_path):
    """merged(): W + (alpha / rank) B A in the base layers, no adapter left, the teacher's architecture (its state
    dict loads into a fresh network of the teacher file's config), and the student's outputs to float error."""
    from multistep.nets.lora import has_lora, merged

    c, m, a = fresh(trial(tmp_path))
    fit(a, m, lambda g: c.data.sample(16, g), 4, 1.0, 0.9, 4, 10)
    plain = merged(c.student)
    assert not has_lora(plain) and has_lora(c.student)
    net = build_net(NET)
    net.load_state_dict(plain.net.state_dict())  # strict: exactly the teacher's keys
    z, t = torch.randn(4, 1, 8, 8, dtype=torch.float64), torch.full((4,), 0.3, dtype=torch.float64)
    torch.testing.assert_close(plain(z, t), c.student(z, t), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(plain(z, t), c.teacher(z, t), atol=1e-4)  # the merged adapters are in it
