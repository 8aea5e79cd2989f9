"""Build a trial's components (schedule, data, teacher, student, method) from its config."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from multistep.config import ConfigError, DataCfg, StudentCfg, TrialCfg
from multistep.data import FieldError, data_kind
from multistep.diffusion.schedules import Schedule
from multistep.methods import METHODS, method_label
from multistep.nets.mlp import VDenoiser
from multistep.teachers import teacher_kind
from multistep.train.teacher import build_net

DEFAULT_CACHE = Path(os.environ.get("MULTISTEP_CACHE", "~/.cache/multistep")).expanduser()


def make_data(d: DataCfg, where: str = "", rows: bool = False):
    """The data distribution of a config in memory (a GaussianMixture, ImageData, ...; rows: only the few rows a
    check needs); a problem with its files is a ConfigError `<where>data.<field>: ...`."""
    kind = data_kind(d)
    return _from_kind(kind.sample_rows if rows else kind.load, d, where)


def _from_kind(fn, d: DataCfg, where: str):
    """fn(d), one of the data kind's functions; a problem with its files is a ConfigError `<where>data.<field>: ...`."""
    try:
        return fn(d)
    except FieldError as e:
        raise ConfigError(f"{where}data.{e.field}: {e}") from None


def student_net_cfg(s: StudentCfg, shape: tuple) -> dict:
    """The student.* network for samples of `shape` as a build_net dict (also what an export records)."""
    common = {"time_dim": s.time_dim, "time_features": s.time_features, "dropout": s.dropout}
    if s.net == "mlp":
        return {"kind": "mlp", "dim": math.prod(shape), "hidden": s.hidden, "depth": s.depth, **common}
    return {
        "kind": "unet",
        "in_ch": shape[0],
        "resolution": shape[-1],
        "base_ch": s.base_ch,
        "ch_mult": list(s.ch_mult),
        "num_res_blocks": s.num_res_blocks,
        "attn_resolutions": list(s.attn_resolutions),
        **common,
    }


def platform_student(cfg: TrialCfg, sched: Schedule, shape: tuple) -> VDenoiser:
    """The student.* network for samples of `shape`; initial weights from train.seed (re-runs agree)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.train.seed)
        try:
            net = build_net(student_net_cfg(cfg.student, shape))
        except ValueError as e:  # e.g. a UNet on Parquet images whose side its downsamplings do not divide
            raise ConfigError(f"student.net: {e}") from None
    return VDenoiser(net, sched)


def sample_shape(d: DataCfg, data=None, where: str = "") -> tuple:
    """The shape of one sample: the loaded data's, else the kind's without loading (a problem with its files is a
    ConfigError `<where>data.<field>: ...`; also `multistep teacher`'s check)."""
    return tuple(data.shape if data is not None else _from_kind(data_kind(d).shape, d, where))


def plausibility_rows(data, n: int = 256) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(x, y): n data rows (and their labels) for the imported teacher's plausibility check, drawn with a fixed seed."""
    g = torch.Generator().manual_seed(0)
    if hasattr(data, "sample_labelled"):
        return data.sample_labelled(n, g)
    return data.sample(n, g), None


@dataclass
class Components:
    schedule: Schedule
    data: object  # GaussianMixture or ImageData: .shape, .sample(n, generator, dtype)
    teacher: nn.Module
    student: VDenoiser


def build(cfg: TrialCfg, load_data: bool = True, check_teacher: bool = True) -> Components:
    """Schedule, data, teacher and student of a trial, built by the teacher's kind (teachers/<kind>.py).
    `load_data=False` leaves the data to the caller (None), e.g. a worker streaming its slice of Parquet shards, when
    the teacher does not need it (an exact teacher is the data's). `check_teacher=False` skips an imported teacher's
    plausibility check (trial workers: the driver's shared assets ran it already)."""
    c = teacher_kind(cfg.teacher).build(cfg, load_data, check_teacher)
    if (lora := cfg.student.lora) is not None:
        from multistep.nets.lora import add_lora

        try:
            add_lora(c.student.net, lora.rank, lora.alpha, lora.target_modules)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    return c


def teacher_classes(teacher) -> int | None:
    """Number of classes of a class-conditional network teacher (id num_classes is its null class), else None."""
    return getattr(teacher, "num_classes", None) or getattr(getattr(teacher, "net", None), "num_classes", None)


def uses_labels(teacher, data_has_labels: bool) -> bool:
    """Training batches are (x, y) and evaluation is conditioned on fixed labels iff the teacher is
    class-conditional and the data has labels; otherwise everything is unconditional (null class)."""
    return teacher_classes(teacher) is not None and data_has_labels


def guidance_error(cfg: TrialCfg, labelled: bool) -> str | None:
    """Why method.guidance cannot be used with this trial's teacher and data (None when it can)."""
    w = cfg.method.guidance
    text_to_image = teacher_kind(cfg.teacher).latent(cfg)  # its null condition is the empty prompt
    if w > 0 and cfg.teacher.imported and cfg.teacher.null_label is None and not text_to_image:
        return f"method.guidance: {w:g} needs teacher.null_label (the label {cfg.teacher.path} was trained with for no class)"
    if w > 0 and not labelled:
        return (
            f"method.guidance: {w:g} needs a class-conditional network teacher (net.num_classes in "
            f"`multistep teacher`) and labelled data; {cfg.teacher.path or cfg.teacher.kind} with {cfg.data.label} is not"
        )
    return None


def make_method(cfg: TrialCfg, c: Components):
    """The trial's method object, built by its registry entry (methods/<name>.py), named as in the results table."""
    method = METHODS[cfg.method.name].build(cfg, c)
    method.label = method_label(cfg)
    return method
