"""Typed sweep configuration: YAML file -> validated config -> concrete trial configs.

Every user error becomes a `ConfigError` whose one-line message names the file, the field as a
dotted path, and what was expected. Unknown keys are errors everywhere (extra="forbid").
"""

from __future__ import annotations

import copy
import itertools
import math
import os
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

MAX_FILE_BYTES = 1 << 20  # sweep files are small; anything larger is a mistake


class ConfigError(ValueError):
    """Bad user input; the CLI prints str(e) on one line and exits 2."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


PosInt = Annotated[int, Field(ge=1)]
PosFloat = Annotated[float, Field(gt=0)]


# -- components -----------------------------------------------------------------------------------
class ScheduleCfg(Strict):
    name: Literal["cosine", "clipped_cosine", "shifted_cosine", "interpolated_cosine"] = "cosine"
    params: dict[str, float] = {}  # e.g. {image_d: 64, noise_low: 32} for interpolated_cosine


class DataCfg(Strict):
    kind: Literal["gmm"] = "gmm"                  # Gaussian mixture with an exact denoiser
    shape: list[PosInt] = [16]                    # shape of one sample (vectors: [d]; images: [C, H, W])
    components: PosInt = 10                       # number of mixture components
    mean_std: PosFloat = 0.6                      # component means ~ N(0, mean_std^2)
    component_std: PosFloat = 0.1                 # isotropic std of every component
    seed: int = 0                                 # seed of the mixture itself


class TeacherCfg(Strict):
    kind: Literal["analytic"] = "analytic"        # analytic: exact E[x | z_t] of the data mixture
    schedule: ScheduleCfg = ScheduleCfg()


class StudentCfg(Strict):
    net: Literal["mlp"] = "mlp"
    hidden: PosInt = 256                          # MLP width
    depth: PosInt = 3                             # hidden layers
    time_dim: PosInt = 64                         # sinusoidal time features
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0
    init_iterations: Annotated[int, Field(ge=0)] = 3000  # warm start: v-loss regression onto the teacher (the paper starts from the diffusion model)
    init_learning_rate: PosFloat = 1e-3


class ConstantAnneal(Strict):
    name: Literal["constant"]
    n: PosFloat = 256                             # teacher steps over [0, 1]


class LogLinearAnneal(Strict):
    name: Literal["loglinear"]
    start: PosFloat = 64                          # teacher steps at iteration 0
    end: PosFloat = 1280                          # teacher steps after `fraction` of training
    fraction: Annotated[float, Field(gt=0, le=1)] = 0.5


class CmSqrtAnneal(Strict):
    name: Literal["cm_sqrt"]
    s0: PosFloat = 2
    s1: PosFloat = 150


class IctDoublingAnneal(Strict):
    name: Literal["ict_doubling"]
    s0: PosFloat = 10
    s1: PosFloat = 1280


AnnealCfg = Annotated[Union[ConstantAnneal, LogLinearAnneal, CmSqrtAnneal, IctDoublingAnneal], Field(discriminator="name")]


class MethodCfg(Strict):
    name: Literal["mcm", "tract", "progressive"] = "mcm"  # MCM (S = 1: CD/CT), TRACT, progressive distillation
    mode: Literal["distill", "train"] = "distill"  # mcm: distil the teacher (MCD) or train on data (MCT)
    student_steps: PosInt = 4                     # S: sampling steps of the (final) student
    anneal: AnnealCfg = LogLinearAnneal(name="loglinear", start=16, end=256, fraction=0.5)  # mcm: teacher steps N(i)
    xvar_frac: Annotated[float, Field(ge=0)] = 0.75  # mcm: eta of the aDDIM teacher step
    teacher_integrator: Literal["addim", "ddim"] = "addim"  # mcm distill: teacher step
    loss_weight: Literal["snr+1", "max(snr,1)", "snr"] | None = None  # default: snr+1 (mcm), max(snr,1) (tract, progressive)
    distance: Literal["pseudo_huber", "pseudo_huber_ict", "l2sq", "l2sq_sum"] | None = None  # default: pseudo_huber / l2sq_sum / l2sq
    huber_eps: PosFloat = 1e-4                    # epsilon of pseudo_huber
    target_ema: Annotated[float, Field(ge=0, lt=1)] = 0.0  # mcm: 0 = stop-gradient of the online net; >0 EMA target
    t_sampling: Literal["uniform", "lognormal"] = "uniform"  # mcm: grid positions uniform or iCT lognormal
    cm_sampler_steps: list[PosInt] = []           # mcm with S = 1: also evaluate the CM stochastic sampler at these steps
    clip_x: Annotated[float, Field(ge=0)] = 0.0   # clip x_hat to [-c, c] inside target steps (tract; 0 = off)
    time_schedule: list[PosInt] | None = None     # tract: phases ts[p] -> ts[p+1] steps; default [64, 8S, S] (or [64, S] when 8S >= 64)
    self_teacher_ema: Annotated[float, Field(ge=0, lt=1)] = 0.5  # tract: mu_S (bias-corrected)
    pd_start_steps: PosInt = 64                   # progressive: teacher steps of the first phase

    @model_validator(mode="after")
    def _combinations(self):
        if self.name == "tract":
            if self.time_schedule is None:
                S = self.student_steps
                self.time_schedule = [64, 8 * S, S] if 8 * S < 64 else [max(64, 2 * S), S]
            ts = self.time_schedule
            if len(ts) < 2 or any(a <= b or a % b for a, b in zip(ts, ts[1:])):
                raise ValueError(f"time_schedule must decrease and each entry must divide the one before, got {ts}")
            if ts[-1] != self.student_steps:
                raise ValueError(f"time_schedule must end at student_steps = {self.student_steps}, got {ts}")
            if self.mode != "distill":
                raise ValueError("tract only distils (mode: distill)")
        if self.name == "progressive":
            r = self.pd_start_steps / self.student_steps
            if r < 2 or r != 2 ** round(math.log2(r)):
                raise ValueError(f"pd_start_steps / student_steps must be a power of 2 >= 2, got {self.pd_start_steps}/{self.student_steps}")
            if self.mode != "distill":
                raise ValueError("progressive only distils (mode: distill)")
        if self.cm_sampler_steps and (self.name != "mcm" or self.student_steps != 1):
            raise ValueError("cm_sampler_steps needs name: mcm and student_steps: 1")
        return self


class TrainCfg(Strict):
    iterations: PosInt = 3000
    batch_size: PosInt = 512
    learning_rate: PosFloat = 2e-4
    grad_clip: Annotated[float, Field(ge=0)] = 1.0  # 0 disables clipping
    eval_ema: Annotated[float, Field(ge=0, lt=1)] = 0.999  # EMA of weights used for evaluation
    log_every: PosInt = 100                       # iterations between MLflow metric batches
    checkpoint_every: PosInt = 1000               # iterations between checkpoints
    seed: int = 0


class EvalCfg(Strict):
    samples: PosInt = 5000                        # samples per evaluation (fixed noise per sample index)
    teacher_steps: list[PosInt] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]  # teacher curve, once per sweep
    ode_steps: PosInt = 1024                      # teacher DDIM steps for the paired-error reference
    seed: int = 1234


class ResourcesCfg(Strict):
    num_workers: PosInt = 1                       # Ray Train workers per trial (DDP)
    use_gpu: bool = False
    cpus_per_worker: PosFloat = 1
    gpus_per_worker: Annotated[float, Field(ge=0)] = 0  # fractional packs single-worker trials on one GPU
    max_concurrent_trials: PosInt = 2
    max_failures: Annotated[int, Field(ge=0)] = 1     # worker-group restarts per trial


class SchedulerCfg(Strict):
    name: Literal["fifo", "asha"] = "fifo"        # asha stops trials whose proxy metric lags at each rung
    proxy_samples: PosInt = 1000                  # samples of the cheap in-training proxy (logged as proxy_<metric>)
    grace_checkpoints: PosInt = 1                 # asha: checkpoints every trial runs before it may be stopped
    reduction_factor: Annotated[float, Field(gt=1)] = 2  # asha: keep 1/reduction_factor of trials per rung


class Axis(Strict):
    """One search axis: exactly one of grid / choice / loguniform / uniform."""

    grid: list[Any] | None = None                 # every value, crossed with the other grids
    choice: list[Any] | None = None               # one value drawn per sample
    loguniform: list[PosFloat] | None = None      # [low, high], drawn per sample
    uniform: list[float] | None = None            # [low, high], drawn per sample

    @model_validator(mode="after")
    def _one(self):
        given = [k for k in ("grid", "choice", "loguniform", "uniform") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of grid, choice, loguniform, uniform")
        vals = getattr(self, given[0])
        if not vals:
            raise ValueError(f"{given[0]} must not be empty")
        if given[0] in ("loguniform", "uniform") and (len(vals) != 2 or not vals[0] < vals[1]):
            raise ValueError(f"{given[0]} needs [low, high] with low < high")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in ("grid", "choice", "loguniform", "uniform") if getattr(self, k) is not None)


class TrialCfg(Strict):
    """Everything one trial needs (a sweep file minus its search section)."""

    label: str = ""                               # name in tables/plots; default from the method (mcd, mct, tract, pd)
    data: DataCfg = DataCfg()
    teacher: TeacherCfg = TeacherCfg()
    student: StudentCfg = StudentCfg()
    method: MethodCfg = MethodCfg()
    train: TrainCfg = TrainCfg()
    eval: EvalCfg = EvalCfg()


class SweepCfg(TrialCfg):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")] = "sweep"
    experiment: str = "multistep"                 # MLflow experiment
    description: str = ""
    resources: ResourcesCfg = ResourcesCfg()
    scheduler: SchedulerCfg = SchedulerCfg()
    search: dict[str, Axis] | list[dict[str, Axis]] = {}  # dotted config path -> axis; a list of such blocks = their union
    num_samples: PosInt = 1                       # draws of the random axes (grids are crossed with them)
    max_trials: PosInt = 256                      # refuse sweeps that expand to more trials


# -- loading --------------------------------------------------------------------------------------
class _UniqueKeyLoader(yaml.SafeLoader):
    pass


def _construct_mapping(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def read_yaml(path: str | os.PathLike) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: file not found")
    try:
        if p.stat().st_size > MAX_FILE_BYTES:
            raise ConfigError(f"{p}: file is {p.stat().st_size} bytes, more than the {MAX_FILE_BYTES} allowed for a sweep file")
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: cannot read: {e}") from None
    try:
        doc = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{p}: invalid YAML{where}: {problem}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{p}: top level must be a mapping of settings, got {type(doc).__name__}")
    return doc


def _describe(err: ValidationError, prefix: str = "") -> str:
    e = err.errors()[0]
    loc = ".".join(str(x) for x in e["loc"] if not (isinstance(x, str) and x in ("constant", "loglinear", "cm_sqrt", "ict_doubling")))
    loc = f"{prefix}{loc}" if loc else prefix.rstrip(".") or "(top level)"
    msg = e["msg"]
    if e["type"] == "extra_forbidden":
        msg = "unknown key"
    elif "input" in e and e["type"] not in ("missing",) and not isinstance(e["input"], (dict, list)):
        msg += f" (got {e['input']!r})"
    return f"{loc}: {msg}"


def set_path(doc: dict, dotted: str, value: Any) -> dict:
    out = copy.deepcopy(doc)
    node = out
    parts = dotted.split(".")
    for part in parts[:-1]:
        nxt = node.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise KeyError(dotted)
        node = nxt
    node[parts[-1]] = value
    return out


class SweepPlan:
    """A validated sweep: the config, the raw document, and the concrete trials it expands to."""

    def __init__(self, path: str, cfg: SweepCfg, doc: dict, trials: list[dict]):
        self.path, self.cfg, self.doc, self.trials = path, cfg, doc, trials  # trials: [{"overrides":..., "config":...}]

    def trial_cfg(self, i: int) -> TrialCfg:
        return TrialCfg.model_validate(self.trials[i]["config"])


def expand(cfg: SweepCfg, doc: dict, path: str) -> list[dict]:
    blocks = cfg.search if isinstance(cfg.search, list) else [cfg.search]
    n = sum(math.prod(len(a.grid) for a in b.values() if a.kind == "grid") * cfg.num_samples for b in blocks)
    if n > cfg.max_trials:
        raise ConfigError(f"{path}: search expands to {n} trials, more than max_trials = {cfg.max_trials}")
    rng = np.random.default_rng(cfg.train.seed)  # random axes are reproducible from the sweep file
    base = {k: v for k, v in doc.items() if k in TrialCfg.model_fields}
    return [t for b in blocks for t in _expand_block(b, base, cfg.num_samples, rng, path)]


def _expand_block(search: dict, base: dict, num_samples: int, rng, path: str) -> list[dict]:
    grid_keys = [k for k, a in search.items() if a.kind == "grid"]
    rand_keys = [k for k, a in search.items() if a.kind != "grid"]
    trials = []
    for combo in itertools.product(*[search[k].grid for k in grid_keys]):
        for _ in range(num_samples):
            ov: dict[str, Any] = dict(zip(grid_keys, combo))
            for k in rand_keys:
                a = search[k]
                if a.kind == "choice":
                    ov[k] = a.choice[int(rng.integers(len(a.choice)))]
                elif a.kind == "loguniform":
                    ov[k] = float(np.exp(rng.uniform(np.log(a.loguniform[0]), np.log(a.loguniform[1]))))
                else:
                    ov[k] = float(rng.uniform(*a.uniform))
            trial_doc = base
            for k, v in ov.items():
                if k.split(".")[0] not in TrialCfg.model_fields:
                    raise ConfigError(f"{path}: search.{k}: unknown config path (expected one under {', '.join(TrialCfg.model_fields)})")
                try:
                    trial_doc = set_path(trial_doc, k, v)
                except KeyError:
                    raise ConfigError(f"{path}: search.{k}: path goes through a non-mapping value") from None
            try:
                tc = TrialCfg.model_validate(trial_doc)
            except ValidationError as e:
                raise ConfigError(f"{path}: {_describe(e)} (from search values {ov})") from None
            trials.append({"overrides": ov, "config": tc.model_dump(mode="json")})
    return trials


def load_sweep(path: str | os.PathLike) -> SweepPlan:
    """Read, validate and expand a sweep file; raises ConfigError with a one-line message."""
    doc = read_yaml(path)
    try:
        cfg = SweepCfg.model_validate(doc)
    except ValidationError as e:
        raise ConfigError(f"{path}: {_describe(e)}") from None
    return SweepPlan(str(path), cfg, doc, expand(cfg, doc, str(path)))
