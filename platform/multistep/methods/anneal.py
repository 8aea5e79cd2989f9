"""Teacher-step annealing schedules N_teacher(i), all scaled to the run's length (algorithms.md §4.2, §8.5, §8.7).

Each returns the (real-valued) number of teacher steps over [0, 1] at iteration i of `total`.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

PosFloat = Annotated[float, Field(gt=0)]


class _Anneal(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ConstantAnneal(_Anneal):
    name: Literal["constant"]
    n: PosFloat = Field(256, description="teacher steps over [0, 1]")


class LogLinearAnneal(_Anneal):
    name: Literal["loglinear"]
    start: PosFloat = Field(64, description="teacher steps at iteration 0")
    end: PosFloat = Field(1280, description="teacher steps after `fraction` of training")
    fraction: Annotated[float, Field(gt=0, le=1)] = 0.5


class CmSqrtAnneal(_Anneal):
    name: Literal["cm_sqrt"]
    s0: PosFloat = 2
    s1: PosFloat = 150


class IctDoublingAnneal(_Anneal):
    name: Literal["ict_doubling"]
    s0: PosFloat = 10
    s1: PosFloat = 1280


# The YAML `method.anneal` section: one of the schedules below, chosen by its name.
AnnealCfg = Annotated[ConstantAnneal | LogLinearAnneal | CmSqrtAnneal | IctDoublingAnneal, Field(discriminator="name")]


def constant(i: int, total: int, n: float = 256) -> float:
    return float(n)


def loglinear(i: int, total: int, start: float = 64, end: float = 1280, fraction: float = 0.5) -> float:
    """MCM App. A.1: exp(log start + clip(i / (fraction total), 0, 1) (log end - log start)).

    The paper anneals 64 -> 1280 over the first 100k of 200k iterations (fraction = 0.5).
    """
    progress = min(max(i / max(fraction * total, 1e-12), 0.0), 1.0)
    return math.exp(math.log(start) + progress * (math.log(end) - math.log(start)))


def cm_sqrt(i: int, total: int, s0: float = 2, s1: float = 150) -> float:
    """CM square-root curriculum: N(k) = ceil(sqrt(k/K ((s1+1)^2 - s0^2) + s0^2) - 1) + 1 boundaries,
    i.e. N(k) - 1 teacher steps."""
    n = math.ceil(math.sqrt(i / total * ((s1 + 1) ** 2 - s0**2) + s0**2) - 1) + 1
    return float(n - 1)


def ict_doubling(i: int, total: int, s0: float = 10, s1: float = 1280) -> float:
    """iCT doubling curriculum: N(k) = min(s0 2^floor(k/K'), s1) + 1 boundaries, K' = floor(K / (log2 floor(s1/s0) + 1)),
    i.e. min(s0 2^floor(k/K'), s1) teacher steps."""
    k_prime = math.floor(total / (math.log2(math.floor(s1 / s0)) + 1))
    return float(min(s0 * 2 ** math.floor(i / max(k_prime, 1)), s1))


ANNEALERS = {"constant": constant, "loglinear": loglinear, "cm_sqrt": cm_sqrt, "ict_doubling": ict_doubling}


def teacher_steps(name: str, params: dict, i: int, total: int) -> float:
    return ANNEALERS[name](i, total, **params)
