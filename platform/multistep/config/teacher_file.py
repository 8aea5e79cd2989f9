"""`multistep teacher FILE`: the teacher-file schema (diffusion training of a network teacher)."""

from __future__ import annotations

import os
from typing import Annotated, Literal

from pydantic import Field, field_validator

from multistep.config.io import validate_file
from multistep.config.schema import (
    DataCfg,
    PosFloat,
    PosInt,
    RunName,
    ScheduleCfg,
    Strict,
    WorkerResourcesCfg,
    model_folder,
)
from multistep.data import DATA_KINDS


class UNetCfg(Strict):
    kind: Literal["unet"]
    base_ch: PosInt = 32  # channels at full resolution
    ch_mult: list[PosInt] = [1, 2]  # channel multiplier per level (len - 1 downsamplings)
    num_res_blocks: PosInt = 1  # ResBlocks per level
    attn_resolutions: list[PosInt] = []  # spatial sizes with self-attention
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0
    # class-conditional (needs labelled data); sweeps condition students on the labels (method.guidance: CFG)
    num_classes: PosInt | None = None
    time_dim: Annotated[int, Field(ge=2, multiple_of=2)] = 64  # sinusoidal time features
    # caption-conditional (needs caption data): a local transformers text-encoder folder; each distinct caption's
    # pooled encoding (and the empty prompt's, the null condition) conditions the net (nets/text.py)
    text_encoder: str | None = None

    _encoder_folder = field_validator("text_encoder")(lambda cls, v: model_folder(v))


class MLPNetCfg(Strict):
    kind: Literal["mlp"]
    hidden: PosInt = 256  # width
    depth: PosInt = 3  # hidden layers
    time_dim: Annotated[int, Field(ge=2, multiple_of=2)] = 64
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0


NetCfg = Annotated[UNetCfg | MLPNetCfg, Field(discriminator="kind")]


class TeacherTrainCfg(Strict):
    iterations: PosInt = 5000
    batch_size: PosInt = 128  # global batch, split over the workers
    learning_rate: PosFloat = 1e-3  # Adam
    ema: Annotated[float, Field(ge=0, lt=1)] = 0.999  # EMA of weights: the saved teacher
    grad_clip: Annotated[float, Field(ge=0)] = 1.0  # 0 disables clipping
    label_dropout: Annotated[float, Field(ge=0, le=1)] = 0.1  # conditional nets: null-class probability
    seed: int = 0
    log_every: PosInt = 100  # iterations between loss points on the MLflow run


class TeacherEvalCfg(Strict):
    samples: PosInt = 1000  # DDIM samples per point of the teacher's FD-versus-steps curve
    steps: list[PosInt] = [1, 2, 4, 8, 16, 32, 64]  # DDIM step counts of that curve
    seed: int = 1234  # fixed noise and data sample


class TeacherResourcesCfg(WorkerResourcesCfg):
    max_failures: Annotated[int, Field(ge=0)] = 0  # worker-group restarts (training starts over)


class TeacherFileCfg(Strict):
    name: RunName = "teacher"
    experiment: str = "multistep"  # MLflow experiment of the teacher run
    description: str = ""
    data: DataCfg = DataCfg(kind="digits")
    net: NetCfg = Field(UNetCfg(kind="unet"), validate_default=True)
    schedule: ScheduleCfg = ScheduleCfg()
    train: TeacherTrainCfg = TeacherTrainCfg()
    eval: TeacherEvalCfg = TeacherEvalCfg()
    resources: TeacherResourcesCfg = TeacherResourcesCfg()

    @field_validator("net")
    @classmethod
    def _net_fits_data(cls, net, info):
        d = info.data.get("data")
        kind = DATA_KINDS[d.kind] if d is not None else None
        if net.kind == "unet" and kind and not kind.files and len(shape := kind.shape(d)) != 3:
            raise ValueError(f"unet needs image data ([C, H, W]) but the data's shape is {list(shape)}: use kind: mlp")
        return net


def load_teacher_file(path: str | os.PathLike) -> TeacherFileCfg:
    """Read and validate a teacher file (`multistep teacher FILE`); raises ConfigError with a one-line message."""
    return validate_file(TeacherFileCfg, path)[0]
