"""The teacher kinds `checkpoint` (a file written by `multistep teacher`) and `mlflow` (the run that wrote it, fetched
by the sweep driver, which sets teacher.path): a platform network with the schedule it was trained on; the student
starts as a copy of it (MCM paper)."""

from __future__ import annotations

import os
from pathlib import Path

from multistep.registry import FieldError
from multistep.teachers import kinds


def teacher_file(t) -> str:
    """Local checkpoint of a network teacher. An MLflow teacher is fetched by the driver first
    (tracking/teachers.py), which writes its local path into the trial configs."""
    from multistep.config import ConfigError

    if not t.path:
        raise ConfigError(f"teacher.run_id: {t.run_id}: not fetched to a local file (the sweep driver does this)")
    return t.path


def load(t):
    """(net, info) of the teacher's checkpoint; a bad file is a ConfigError at teacher.path."""
    from multistep.config import ConfigError
    from multistep.train.teacher import load_teacher

    try:
        return load_teacher(teacher_file(t))
    except ValueError as e:
        raise ConfigError(f"teacher.path: {e}") from None


def _build(cfg, load_data: bool = True, check: bool = True):
    import copy

    from multistep.config import ConfigError
    from multistep.diffusion.schedules import make_schedule
    from multistep.nets.mlp import VDenoiser
    from multistep.train.build import Components, make_data

    d = cfg.data
    net, info = load(cfg.teacher)
    sc = info["meta"].get("schedule") or cfg.teacher.schedule.model_dump()
    sched = make_schedule(sc["name"], **sc.get("params", {}))
    data = make_data(d) if load_data else None
    if data is not None:
        _trained_on(cfg, info, tuple(data.shape))
    _same_captions(cfg, net, info)
    k, labels = getattr(net, "num_classes", None), getattr(data, "labels", None)
    if k is not None and labels is not None and len(labels) and int(labels.max()) >= k:  # students see the labels
        raise ConfigError(
            f"teacher.path: {cfg.teacher.path} is conditional on {k} classes, but this data "
            f"({d.label}) has labels up to {int(labels.max())}"
        )
    student_net = copy.deepcopy(net).requires_grad_(True).train()
    return Components(sched, data, VDenoiser(net, sched), VDenoiser(student_net, sched))


def _preflight(cfg, shape: tuple, where: str) -> None:
    """The checkpoint opens and was trained on this data's shape (an older one without its shape: one forward)."""
    from multistep.config import ConfigError
    from multistep.config.errors import first_line
    from multistep.train.teacher import load_teacher

    if not cfg.teacher.path:  # mlflow: fetched (and checked) by the driver
        return
    try:
        net, info = load_teacher(cfg.teacher.path)
    except ValueError as e:
        raise ConfigError(f"{where}teacher.path: {e}") from None
    _same_captions(cfg, net, info, where)
    if not _trained_on(cfg, info, tuple(shape), where):
        import torch

        try:
            with torch.no_grad():
                net(torch.zeros((1, *shape)), torch.full((1,), 0.5))
        except Exception as e:  # a shape mismatch shows as any of several errors
            raise ConfigError(
                f"{where}teacher.path: {cfg.teacher.path} does not take samples of this data's shape "
                f"{tuple(shape)} ({first_line(e)})"
            ) from None


def _same_captions(cfg, net, info: dict, where: str = "") -> None:
    """A caption-conditional teacher distils caption data with its own vocabulary (caption id k means the same
    caption to both); a class-conditional one does not take caption ids for classes."""
    from multistep.config import ConfigError
    from multistep.data import data_kind

    kind = data_kind(cfg.data)
    words, trained = (kind.captions(cfg.data) if kind.captions else None), info["meta"].get("captions")
    at = f"{where}teacher.path: {cfg.teacher.path}"
    if trained is not None and words != trained:
        got = "no captions" if words is None else f"{len(words)} other captions"
        raise ConfigError(
            f"{at} is conditioned on the {len(trained)} captions it was trained with; this data has {got}"
        )
    if trained is None and words is not None and getattr(net, "num_classes", None) is not None:
        raise ConfigError(f"{at} is class-conditional; caption data needs a caption-conditional teacher")


def _trained_on(cfg, info: dict, shape: tuple, where: str = "") -> bool:
    """Whether the checkpoint records the sample shape it was trained on (an older one does not); a shape other
    than the data's is a ConfigError at teacher.path."""
    from multistep.config import ConfigError

    trained_on = info["meta"].get("shape")
    if trained_on is not None and tuple(trained_on) != shape:
        raise ConfigError(
            f"{where}teacher.path: {cfg.teacher.path} was trained on samples of shape {tuple(trained_on)}, "
            f"but this data ({cfg.data.label}) has shape {shape}"
        )
    return trained_on is not None


def _identity(t) -> dict:
    from multistep.metrics.extractors import file_sha256

    return {"kind": "network", "sha256": file_sha256(t.path, 32) if t.path else f"{t.run_id}/{t.artifact_path}"}


def _checkpoint_file(t) -> None:
    kinds.null_label_needs_classes(t)
    if t.path is None:
        raise FieldError("path", "required for kind: checkpoint (a teacher file written by `multistep teacher`)")
    t.path = readable_file(t.path)


def readable_file(path: str) -> str:
    """The absolute path of a readable file (FieldError at teacher.path otherwise)."""
    p = Path(path).expanduser().resolve()
    if not p.is_file():
        raise FieldError("path", f"{p}: teacher checkpoint not found")
    if not os.access(p, os.R_OK):
        raise FieldError("path", f"{p}: teacher checkpoint not readable")
    return str(p)


def _run_id(t) -> None:
    kinds.null_label_needs_classes(t)
    if not t.run_id:
        raise FieldError("run_id", "required for kind: mlflow (the run id `multistep teacher` printed)")
    if t.path is not None:  # set by the driver once fetched
        t.path = readable_file(t.path)


def _network(cfg, teacher) -> dict:
    return {"kind": "platform", "net": load(cfg.teacher)[1]["net"]}


common = dict(build=_build, identity=_identity, preflight=_preflight, network=_network)
CHECKPOINT = kinds.register(kinds.TeacherKind(name="checkpoint", check=_checkpoint_file, **common))
MLFLOW = kinds.register(kinds.TeacherKind(name="mlflow", check=_run_id, fetched=True, **common))
