"""A data kind is one registry entry (data/kinds.py): a throw-away kind registered here is read by the config,
checked by pre-flight, built into a trial (the analytic teacher is its exact denoiser) and keyed in the caches,
with no other file changed."""

import math

import pytest
import torch
from pydantic import Field

from multistep.data import DATA_KINDS, DataKind, FieldError, Options, data_kind, register
from multistep.data.gmm import GaussianMixture


class RingOptions(Options):
    modes: int = Field(6, ge=2)  # Gaussians at equal angles on a circle
    radius: float = Field(1.0, gt=0)
    ring_std: float = Field(0.05, gt=0)


def _ring(d) -> GaussianMixture:
    a = 2 * math.pi * torch.arange(d.modes, dtype=torch.float64) / d.modes
    means = d.radius * torch.stack([a.cos(), a.sin()], 1)
    return GaussianMixture(means, torch.full_like(means, d.ring_std), torch.full((d.modes,), 1 / d.modes), (2,))


def _check(d) -> None:
    if d.ring_std >= d.radius * math.sin(math.pi / d.modes):
        raise FieldError("ring_std", f"{d.ring_std} blurs neighbouring modes of a ring of radius {d.radius}")


@pytest.fixture
def ring():
    kind = register(
        DataKind(
            name="ring",
            options=RingOptions,
            shape=lambda d: (2,),
            load=_ring,
            label=lambda d: f"ring{d.modes}",
            check=_check,
            fd_space="identity",
            mixture=True,
            labelled=False,
        )
    )
    yield kind
    del DATA_KINDS["ring"]


def _write(tmp_path, data: str) -> str:
    f = tmp_path / "ring.yaml"
    f.write_text(
        f"name: ring\nexperiment: tests\ndata: {data}\n"
        "student: {hidden: 32, depth: 2, init_iterations: 10}\n"
        "train: {iterations: 10, batch_size: 16}\neval: {samples: 64, teacher_steps: [1], ode_steps: 8}\n"
        "search:\n  method.student_steps: {grid: [1, 2]}\n"
    )
    return str(f)


def test_a_registered_kind_is_read_checked_and_built(ring, tmp_path, capsys):
    from multistep.cli import main
    from multistep.config import load_sweep
    from multistep.train.build import build, sample_shape
    from multistep.train.checkpoint import content_hash

    ok = _write(tmp_path, "{kind: ring, modes: 4, radius: 2.0}")
    tc = load_sweep(ok).trial_cfg(0)
    assert data_kind(tc.data) is ring and tc.data.label == "ring4" and tc.feature_space == "identity"
    assert ring.identity(tc.data) == {"kind": "ring", "modes": 4, "radius": 2.0, "ring_std": 0.05}
    assert sample_shape(tc.data) == (2,)

    c = build(tc)  # the analytic teacher is the kind's mixture's exact denoiser
    assert c.data.shape == (2,) and c.data.means.shape == (4, 2)
    x = c.data.sample(512, torch.Generator().manual_seed(0)).double()
    assert torch.allclose(x.norm(dim=1).mean(), torch.tensor(2.0, dtype=torch.float64), atol=0.02)
    t = torch.full((512,), 0.4, dtype=torch.float64)
    a, s = c.schedule.alpha(t)[:, None, None], c.schedule.sigma(t)[:, None, None]
    z = a[:, 0] * x + s[:, 0] * torch.randn_like(x)
    var = a**2 * 0.05**2 + s**2  # E[x | z] by hand: the posterior over modes times each mode's Gaussian posterior
    logp = -((z[:, None] - a * c.data.means) ** 2).sum(-1) / (2 * var[..., 0])
    post = c.data.means + a * 0.05**2 / var * (z[:, None] - a * c.data.means)
    x_hat = (logp.softmax(1)[..., None] * post).sum(1)
    assert torch.allclose(c.teacher(z, t), x_hat, atol=1e-10)

    other = load_sweep(_write(tmp_path, "{kind: ring, modes: 6, radius: 2.0}")).trial_cfg(0)
    assert content_hash(ring.identity(other.data)) != content_hash(ring.identity(tc.data))  # cache keys differ

    rc = main(
        [
            "sweep",
            ok,
            "--dry-run",
            "--tracking-uri",
            f"sqlite:///{tmp_path / 'm.db'}",
            "--storage",
            str(tmp_path / "st"),
        ]
    )
    assert rc == 0 and "pre-flight passed" in capsys.readouterr().out


@pytest.mark.parametrize(
    "data, message",
    [
        ("{kind: ring, modes: 1}", "data.modes: Input should be greater than or equal to 2"),
        ("{kind: ring, radius: 0.1}", "data.ring_std: 0.05 blurs neighbouring modes of a ring of radius 0.1"),
        ("{kind: ring, colour: red}", "data.colour: unknown key"),
        ("{kind: rings}", "data.kind: 'rings': not a data kind (registered: digits, gmm, parquet, ring)"),
    ],
)
def test_a_registered_kinds_fields_are_checked_in_one_line(ring, tmp_path, capsys, data, message):
    from multistep.cli import main

    assert main(["sweep", _write(tmp_path, data), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_a_kind_cannot_take_another_kinds_field_or_name(ring):
    class Clash(Options):
        shape: list[int] = [2]

    with pytest.raises(ValueError, match="field 'shape' is already declared by data kind 'gmm'"):
        register(DataKind(name="clash", options=Clash, shape=lambda d: (2,), load=_ring, label=str))
    with pytest.raises(ValueError, match="data kind 'ring' registered twice"):
        register(ring)
    assert "clash" not in DATA_KINDS


def test_a_teacher_file_records_its_whole_data_config():
    """A correlated mixture keeps rank, rank_std and smooth in the teacher file's data line (`multistep eval
    teacher.pt` rebuilds the data from it; the printed sweep line is pasted by users)."""
    from multistep.config import DataCfg
    from multistep.data import data_kind

    d = DataCfg(kind="gmm", shape=[1, 8, 8], components=3, rank=2, rank_std=0.3, smooth=2, seed=5)
    assert DataCfg.model_validate(data_kind(d).identity(d)) == d
    digits = DataCfg(kind="digits", size=16)
    assert data_kind(digits).identity(digits) == {"kind": "digits", "size": 16}
