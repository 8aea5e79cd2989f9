"""The teacher kind `analytic`: the exact denoiser E[x | z_t] of a Gaussian-mixture data kind (nets/analytic.py) on
teacher.schedule; the student is the platform network, warm-started by v-regression onto it."""

from __future__ import annotations

from multistep.teachers import kinds


def _build(cfg, load_data: bool = True, check: bool = True):
    from multistep.diffusion.schedules import make_schedule
    from multistep.nets.analytic import MixtureDenoiser
    from multistep.train.build import Components, make_data, platform_student

    sched = make_schedule(cfg.teacher.schedule.name, **cfg.teacher.schedule.params)
    gmm = make_data(cfg.data)  # the denoiser is the data's: always loaded
    return Components(sched, gmm, MixtureDenoiser(gmm, sched), platform_student(cfg, sched, gmm.shape))


ANALYTIC = kinds.register(
    kinds.TeacherKind(
        name="analytic",
        build=_build,
        identity=lambda t: t.model_dump(include={"kind", "schedule"}),
        check=kinds.null_label_needs_classes,
        copies=lambda cfg: False,
        exact=True,
    )
)
