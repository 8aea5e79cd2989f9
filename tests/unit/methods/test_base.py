"""The method registry (methods/base.py): a method is one file that registers its options, builder and label.

A throw-away method registered here, in the test, becomes a valid `method.name`, its options are validated at
method.<key>, its label names the trial, and a trial of it is built and trained by the ordinary training loop."""

from typing import Annotated

import pytest
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from multistep.config import TrialCfg, describe
from multistep.diffusion.samplers import mcm_sample
from multistep.methods import METHODS, MethodSpec, OptionError, method_label, register
from multistep.methods.base import conditioned, per_example_mean, split_batch
from multistep.train.build import build, make_method
from multistep.train.loop import Hooks, fit, new_state

pytestmark = pytest.mark.usefixtures("one_thread")


class Regress:
    """Throw-away method: regress the student onto the teacher's x-prediction at uniform t (a 'warm start')."""

    def __init__(self, schedule, teacher, student_steps, t_max):
        self.schedule, self.teacher, self.student_steps, self.t_max, self.label = (
            schedule,
            teacher,
            student_steps,
            t_max,
            "?",
        )

    def loss(self, student, x, iteration, total, g):
        x, y = split_batch(x)
        t = torch.rand(x.shape[0], generator=g, dtype=x.dtype) * self.t_max
        a, s = self.schedule.alpha_sigma(t)
        z = a[:, None] * x + s[:, None] * torch.randn(x.shape, generator=g, dtype=x.dtype)
        with torch.no_grad():
            target = conditioned(self.teacher, y)(z, t)
        loss = per_example_mean((student(z, t) - target) ** 2).mean()
        return loss, {"loss": loss.detach()}

    def after_step(self, student, ema, iteration, total):
        pass

    def state_dict(self):
        return {}

    def evaluations(self, ema, y=None, seed=0):
        S, sched, f = self.student_steps, self.schedule, conditioned(ema, y)
        return [(self.label, S, lambda noise: mcm_sample(f, sched, noise, S))]


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid")
    t_max: Annotated[float, Field(gt=0, le=1)] = 1.0  # regress at t in [0, t_max]


def check(m):
    if m.name == "regress" and m.mode != "distill":
        raise OptionError("mode", "regress only distils")


def builder(cfg, c):
    return Regress(c.schedule, c.teacher, cfg.method.student_steps, cfg.method.t_max)


@pytest.fixture
def registered():
    register(MethodSpec("regress", Options, builder, lambda m: f"reg{m.t_max:g}", check))
    yield
    del METHODS["regress"]


TINY = {
    "data": {"kind": "gmm", "shape": [4], "components": 3},
    "student": {"hidden": 32, "depth": 2, "time_dim": 8, "init_iterations": 0},
    "train": {"iterations": 60, "batch_size": 64, "learning_rate": 3e-3},
}


def trial(method: dict) -> TrialCfg:
    return TrialCfg.model_validate(TINY | {"method": method})


def error(method: dict) -> str:
    with pytest.raises(ValidationError) as e:
        trial(method)
    return describe(e.value)


def test_an_unregistered_method_and_its_options_are_refused():
    assert error({"name": "regress"}).startswith("method.name: unknown method 'regress'")
    assert error({"t_max": 0.5}) == "method.t_max: unknown key"


def test_a_registered_method_is_a_method_name_with_its_own_options_and_label(registered):
    tc = trial({"name": "regress", "student_steps": 2, "t_max": 0.5})
    assert (tc.method.t_max, method_label(tc)) == (0.5, "reg0.5")
    assert trial({"name": "regress"}).method.t_max == 1.0  # its default
    assert trial({"name": "mcm"}).method.t_max == 1.0  # other methods' trials carry it too (a shared sweep base)
    assert error({"name": "regress", "t_max": 2}).startswith("method.t_max: Input should be less than or equal to 1")
    assert error({"name": "regress", "mode": "train"}) == "method.mode: regress only distils"
    assert error({"name": "regress", "t_maximum": 1}) == "method.t_maximum: unknown key"
    with pytest.raises(ValueError, match="already belong to regress"):  # options belong to one method
        register(MethodSpec("other", Options, builder, lambda m: "x"))


def test_a_trial_of_a_registered_method_trains_in_the_ordinary_loop(registered):
    tc = trial({"name": "regress", "student_steps": 2, "t_max": 0.5})
    c = build(tc)
    method = make_method(tc, c)
    assert method.label == "reg0.5"  # the object carries the results table's name
    losses = []
    state = new_state(c.student, tc.train.learning_rate, tc.train.seed, method)
    fit(
        state,
        method,
        lambda g: c.data.sample(64, g),
        60,
        1.0,
        0.9,
        20,
        10**6,
        Hooks(log=lambda it, m: losses.append(m["loss"])),
    )
    assert len(losses) == 3 and losses[-1] < 0.5 * losses[0]  # it learns the teacher
    [(label, steps, sample)] = method.evaluations(state.ema)
    x, nfe = sample(torch.randn(16, 4, generator=torch.Generator().manual_seed(0)))
    assert (label, steps, nfe, x.shape) == ("reg0.5", 2, 2, (16, 4)) and torch.isfinite(x).all()


def test_config_errors_of_the_built_in_methods_still_name_their_field():
    assert error({"name": "tract", "student_steps": 2, "guidance": 2}).startswith(
        "method.guidance: needs mode: distill and a method with a teacher step"
    )
    assert "pd_start_steps / student_steps must be a power of 2" in error({"name": "progressive", "student_steps": 3})
    assert error({"name": "tract", "mode": "train", "student_steps": 8}) == "method: tract only distils (mode: distill)"
