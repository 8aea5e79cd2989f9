"""The teacher kinds `diffusers` (a save_pretrained folder), `torchscript` (a TorchScript or torch.export file) and
`state_dict` (weights loaded into the user's own builder): networks trained elsewhere, loaded and put on the
platform's schedule by nets/imported.py (docs/teachers.md). The student starts as a copy of the network
(student.copy_teacher), else as the platform network warm-started onto it."""

from __future__ import annotations

from pathlib import Path

from multistep.registry import FieldError
from multistep.teachers import kinds
from multistep.teachers.kinds import teacher_kind
from multistep.teachers.network import readable_file


def load(t, where: str = ""):
    """The teacher as a denoiser on its student schedule; a problem is a ConfigError `<where><teacher field>: ...`."""
    from multistep.config import ConfigError

    try:
        return teacher_kind(t).open(t)
    except ValueError as e:
        raise ConfigError(f"{where}{e}") from None


def _build(cfg, load_data: bool = True, check: bool = True):
    import copy

    from multistep.config import ConfigError
    from multistep.nets import imported
    from multistep.train.build import Components, make_data, platform_student, plausibility_rows, sample_shape

    teacher = load(cfg.teacher)[0]  # trained elsewhere: the adapter puts it on its student schedule
    data = make_data(cfg.data) if load_data else None
    if check and cfg.teacher.check and data is not None:
        if err := imported.plausibility_error(teacher, *plausibility_rows(data)):
            raise ConfigError(f"teacher.parameterization: {cfg.teacher.path}: {err}")
    student = copy.deepcopy(teacher).requires_grad_(True).train() if cfg.student.copy_teacher else None
    student = student or platform_student(cfg, teacher.schedule, sample_shape(cfg.data, data))
    return Components(teacher.schedule, data, teacher, student)


def _preflight(cfg, shape: tuple, where: str) -> None:
    """The network loads, takes the data's shape (and labels), returns finite values, and its declared
    parameterisation passes the plausibility check on up to 256 rows of the data."""
    import torch

    from multistep.config import ConfigError
    from multistep.config.errors import first_line
    from multistep.nets import imported
    from multistep.train.build import make_data, plausibility_rows

    f, _ = load(cfg.teacher, where)
    x, y = plausibility_rows(make_data(cfg.data, where, rows=True))  # a few rows, not the dataset
    y = y if f.num_classes is not None else None
    at = f"{where}teacher.path: {cfg.teacher.path}"
    try:
        with torch.no_grad():
            out = f(x[:2].double(), torch.full((2,), 0.5, dtype=torch.float64), None if y is None else y[:2])
    except Exception as e:  # a shape or channel mismatch shows as any of several errors
        raise ConfigError(f"{at} does not take samples of this data's shape {tuple(shape)} ({first_line(e)})") from None
    if not torch.isfinite(out).all():
        raise ConfigError(f"{at} returns non-finite values on the first batch of this data")
    if tuple(out.shape[1:]) != tuple(shape):
        raise ConfigError(
            f"{at} returns samples of shape {tuple(out.shape[1:])}, but this data has shape {tuple(shape)}"
        )
    if cfg.teacher.check and (err := imported.plausibility_error(f, x, y)):
        raise ConfigError(f"{where}teacher.parameterization: {err}")


def _identity(t) -> dict:
    """Its files and everything that declares how to read them."""
    from multistep.metrics.extractors import tree_sha256

    return {"kind": t.kind, "sha256": tree_sha256(t.path)} | t.model_dump(
        exclude={"kind", "path", "run_id", "artifact_path"}
    )


def _files(t) -> None:
    if t.path is None:
        raise FieldError("path", f"required for kind: {t.kind} (the teacher's files)")
    t.path = readable_file(t.path)


def _declared(t) -> None:
    _files(t)
    if t.parameterization is None:
        raise FieldError("parameterization", f"required for kind: {t.kind} (eps, v, x0, edm or flow)")
    kinds.null_label_needs_classes(t)


def _built(t) -> None:
    _declared(t)
    if not t.builder or ":" not in t.builder:
        raise FieldError("builder", 'required for kind: state_dict, as "package.module:callable"')


def _folder(t) -> None:
    if t.path is None:
        raise FieldError("path", "required for kind: diffusers (the teacher's files)")
    p = Path(t.path).expanduser().resolve()
    if not p.is_dir():
        raise FieldError("path", f"{p}: not a folder (kind diffusers needs a save_pretrained folder)")
    t.path = str(p)  # num_classes and null_label may come from the folder's UNet config


def _declare(t) -> dict:
    from multistep.nets import imported

    return imported.declaration(t)


def _declare_diffusers(t) -> dict:
    from multistep.nets import imported

    return imported.declaration(t, imported.diffusers_declaration)


def _open_diffusers(t):
    from multistep.nets import imported

    return imported.load(t, imported.diffusers_network, imported.diffusers_declaration)


def _open_scripted(t):
    from multistep.nets import imported

    return imported.load(t, imported.scripted_network)


def _open_built(t):
    from multistep.nets import imported

    return imported.load(t, imported.built_network)


def _diffusers_shape(teacher) -> tuple[int, ...] | None:
    if hasattr(teacher.net, "table"):  # a text-to-image UNet's samples are latents, not the data's images
        return None
    u = teacher.net.unet.config  # a diffusers UNet knows its sample size
    return (u.in_channels, u.sample_size, u.sample_size)


def _pipeline(cfg) -> str | None:
    """The folder of a text-to-image pipeline teacher (teachers/text_to_image.py), else None."""
    from multistep.teachers.text_to_image import is_pipeline

    return cfg.teacher.path if is_pipeline(cfg.teacher.path) else None


def _build_diffusers(cfg, load_data: bool = True, check: bool = True):
    if _pipeline(cfg):
        from multistep.teachers import text_to_image

        return text_to_image.build(cfg, load_data, check)
    return _build(cfg, load_data, check)


def _preflight_diffusers(cfg, shape: tuple, where: str) -> None:
    if _pipeline(cfg):
        from multistep.teachers import text_to_image

        return text_to_image.preflight(cfg, shape, where)
    return _preflight(cfg, shape, where)


common = dict(
    build=_build,
    identity=_identity,
    preflight=_preflight,
    copies=lambda cfg: cfg.student.copy_teacher,
    imported=True,
)
DIFFUSERS = kinds.register(
    kinds.TeacherKind(
        name="diffusers",
        check=_folder,
        open=_open_diffusers,
        declare=_declare_diffusers,
        network=lambda cfg, f: {"kind": "diffusers", "config": dict(f.net.unet.config)},
        known_shape=_diffusers_shape,
        latent=_pipeline,
        **common | {"build": _build_diffusers, "preflight": _preflight_diffusers},
    )
)
TORCHSCRIPT = kinds.register(
    kinds.TeacherKind(
        name="torchscript",
        check=_declared,
        open=_open_scripted,
        declare=_declare,
        network=lambda cfg, f: {"kind": "torchscript"},  # the architecture lives only in the TorchScript file
        opaque=True,
        **common,
    )
)
STATE_DICT = kinds.register(
    kinds.TeacherKind(
        name="state_dict",
        check=_built,
        open=_open_built,
        declare=_declare,
        network=lambda cfg, f: {
            "kind": "builder",
            "builder": cfg.teacher.builder,
            "builder_args": cfg.teacher.builder_args,
        },
        **common,
    )
)
