"""A teacher kind is one registry entry (teachers/kinds.py): a throw-away kind registered here is read and checked
by the config, run by pre-flight, built into a trial whose method trains on it, and keyed in the caches, with no
other file changed."""

import pytest
import torch

from multistep.registry import FieldError
from multistep.teachers import TEACHER_KINDS, TeacherKind, register, teacher_kind

PREFLIGHT_CALLS = []


def _build(cfg, load_data=True, check=True):
    """The mixture's exact denoiser with its x_hat shrunk by 10%: a teacher no built-in kind gives."""
    from multistep.diffusion.schedules import make_schedule
    from multistep.nets.analytic import MixtureDenoiser
    from multistep.train.build import Components, make_data, platform_student

    sched = make_schedule(cfg.teacher.schedule.name)
    gmm = make_data(cfg.data)
    exact = MixtureDenoiser(gmm, sched)

    class Shrunk(torch.nn.Module):
        def forward(self, z, t, y=None):
            return 0.9 * exact(z, t)

    return Components(sched, gmm, Shrunk(), platform_student(cfg, sched, gmm.shape))


def _check(t):
    if t.path is not None:
        raise FieldError("path", "kind shrunk reads no files")


def _preflight(cfg, shape, where):
    PREFLIGHT_CALLS.append(shape)
    if shape != (16,):
        from multistep.config import ConfigError

        raise ConfigError(f"{where}teacher.kind: shrunk takes vectors of 16, not {shape}")


@pytest.fixture
def shrunk():
    kind = register(
        TeacherKind(
            name="shrunk",
            build=_build,
            identity=lambda t: {"kind": "shrunk", "schedule": t.schedule.name},
            check=_check,
            preflight=_preflight,
            copies=lambda cfg: False,
        )
    )
    yield kind
    del TEACHER_KINDS["shrunk"]


def _sweep(tmp_path, teacher: str, shape: str = "[16]") -> str:
    f = tmp_path / "shrunk.yaml"
    f.write_text(
        f"name: shrunk\nexperiment: tests\ndata: {{kind: gmm, shape: {shape}}}\nteacher: {teacher}\n"
        "student: {hidden: 32, depth: 2, init_iterations: 10}\n"
        "train: {iterations: 10, batch_size: 16}\neval: {samples: 64, teacher_steps: [1], ode_steps: 8}\n"
    )
    return str(f)


def test_a_registered_teacher_kind_is_built_checked_and_trained_on(shrunk, tmp_path, capsys):
    from multistep.cli import main
    from multistep.config import load_sweep
    from multistep.train.build import build, make_method
    from multistep.train.checkpoint import content_hash

    tc = load_sweep(_sweep(tmp_path, "{kind: shrunk}")).trial_cfg(0)
    assert teacher_kind(tc.teacher) is shrunk and not tc.teacher.imported
    c = build(tc)
    z, t = torch.randn(8, 16, dtype=torch.float64), torch.full((8,), 0.5, dtype=torch.float64)
    from multistep.nets.analytic import MixtureDenoiser

    assert torch.allclose(c.teacher(z, t), 0.9 * MixtureDenoiser(c.data, c.schedule)(z, t))
    method = make_method(tc, c)  # MCD's target steps call this teacher
    loss, _ = method.loss(c.student, c.data.sample(16, torch.Generator().manual_seed(0)), 0, 10, torch.Generator())
    assert torch.isfinite(loss) and loss.requires_grad
    analytic = load_sweep(_sweep(tmp_path, "{kind: analytic}")).trial_cfg(0)
    assert content_hash(shrunk.identity(tc.teacher)) != content_hash(
        teacher_kind(analytic.teacher).identity(analytic.teacher)
    )

    PREFLIGHT_CALLS.clear()
    rc = main(
        ["sweep", _sweep(tmp_path, "{kind: shrunk}"), "--dry-run", "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"]
    )
    assert rc == 0 and PREFLIGHT_CALLS == [(16,)] and "pre-flight passed" in capsys.readouterr().out


@pytest.mark.parametrize(
    "teacher, shape, message",
    [
        ("{kind: shrunk, path: /etc/hosts}", "[16]", "teacher.path: kind shrunk reads no files"),
        ("{kind: shrunk}", "[8]", "teacher.kind: shrunk takes vectors of 16, not (8,)"),
        ("{kind: shrank}", "[16]", "teacher.kind: 'shrank': not a teacher kind (registered: analytic"),
    ],
)
def test_a_registered_teacher_kinds_errors_are_one_line(shrunk, tmp_path, capsys, teacher, shape, message):
    from multistep.cli import main

    assert main(["sweep", _sweep(tmp_path, teacher, shape), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    with pytest.raises(ValueError, match="teacher kind 'shrunk' registered twice"):
        register(shrunk)
