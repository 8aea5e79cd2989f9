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
    base_ch: PosInt = Field(32, description="channels at full resolution")
    ch_mult: list[PosInt] = Field([1, 2], description="channel multiplier per level (len - 1 downsamplings)")
    num_res_blocks: PosInt = Field(1, description="ResBlocks per level")
    attn_resolutions: list[PosInt] = Field([], description="spatial sizes with self-attention")
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0
    num_classes: PosInt | None = Field(
        None,
        description="class-conditional (needs labelled data); sweeps condition students on the labels (method.guidance: CFG)",
    )
    time_dim: Annotated[int, Field(ge=2, multiple_of=2)] = Field(64, description="sinusoidal time features")
    text_encoder: str | None = Field(
        None,
        description="caption-conditional (needs caption data): a local transformers text-encoder folder; each distinct caption's pooled encoding (and the empty prompt's, the null condition) conditions the net (nets/text.py)",
    )

    _encoder_folder = field_validator("text_encoder")(lambda cls, v: model_folder(v))


class MLPNetCfg(Strict):
    kind: Literal["mlp"]
    hidden: PosInt = Field(256, description="width")
    depth: PosInt = Field(3, description="hidden layers")
    time_dim: Annotated[int, Field(ge=2, multiple_of=2)] = 64
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0


NetCfg = Annotated[UNetCfg | MLPNetCfg, Field(discriminator="kind")]


class TeacherTrainCfg(Strict):
    iterations: PosInt = 5000
    batch_size: PosInt = Field(128, description="global batch, split over the workers")
    learning_rate: PosFloat = Field(1e-3, description="Adam")
    ema: Annotated[float, Field(ge=0, lt=1)] = Field(0.999, description="EMA of weights: the saved teacher")
    grad_clip: Annotated[float, Field(ge=0)] = Field(1.0, description="0 disables clipping")
    label_dropout: Annotated[float, Field(ge=0, le=1)] = Field(
        0.1, description="conditional nets: null-class probability"
    )
    seed: int = 0
    log_every: PosInt = Field(100, description="iterations between loss points on the MLflow run")


class TeacherEvalCfg(Strict):
    samples: PosInt = Field(1000, description="DDIM samples per point of the teacher's FD-versus-steps curve")
    steps: list[PosInt] = Field([1, 2, 4, 8, 16, 32, 64], description="DDIM step counts of that curve")
    seed: int = Field(1234, description="fixed noise and data sample")


class TeacherResourcesCfg(WorkerResourcesCfg):
    max_failures: Annotated[int, Field(ge=0)] = 0  # worker-group restarts (training starts over)


class TeacherFileCfg(Strict):
    name: RunName = "teacher"
    experiment: str = Field("multistep", description="MLflow experiment of the teacher run")
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
