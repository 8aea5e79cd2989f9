"""rCM (methods/rcm.py): sCM's loss until the tangent warm-up ends, then plus the DMD term at weight 1 / (100 D)
(the shared DMD / rCM behaviour, resumes and GAN head: tests/unit/methods/test_dmd.py)."""

import copy

import torch

from multistep.methods.dmd import FakeScore
from multistep.methods.rcm import RCM
from unit.methods.test_dmd import _mixture_student


def test_rcm_adds_the_dmd_term_only_after_the_warm_up():
    """Before the tangent warm-up ends rCM's loss is sCM's (same RNG, same value); after it the DMD term enters with
    its weight 1 / (100 D)."""
    from multistep.methods.scm import SCM

    sched, gmm, teacher, student = _mixture_student()
    x = gmm.sample(64, torch.Generator().manual_seed(5))
    r = RCM(sched, 2, teacher=teacher, fake=FakeScore(copy.deepcopy(student), sched, 1e-3), tangent_warmup=0.5)
    s = SCM(sched, 2, teacher=teacher, tangent_warmup=0.5)
    early_r, logs = r.loss(student, x, 10, 100, torch.Generator().manual_seed(6))
    early_s, _ = s.loss(student, x, 10, 100, torch.Generator().manual_seed(6))
    assert torch.equal(early_r, early_s) and logs["dmd_loss"] == 0 and r.fake.steps == 0
    late_r, logs = r.loss(student, x, 60, 100, torch.Generator().manual_seed(7))
    late_s, _ = s.loss(student, x, 60, 100, torch.Generator().manual_seed(7))
    assert r.fake.steps == 5 and logs["dmd_loss"] > 0
    torch.testing.assert_close(late_r, late_s + logs["dmd_loss"] / (100 * 2), rtol=1e-12, atol=0)
