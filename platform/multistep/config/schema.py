"""The trial and sweep schema: every section of a sweep file as a strict pydantic model (unknown keys are errors)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from multistep.config.errors import sub_field_error
from multistep.data import DATA_KINDS
from multistep.methods import METHODS, OptionError
from multistep.registry import FieldError
from multistep.teachers import TEACHER_KINDS
from multistep.train.loop import WarmStart


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


PosInt = Annotated[int, Field(ge=1)]
PosFloat = Annotated[float, Field(gt=0)]
RunName = Annotated[
    str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
]  # a sweep's or a teacher's name (folders, tags)


def with_registered_options(cls, data, models):
    """A flat section (`data:`, `method:`) as its model's own keys plus every registered entry's options, each set
    validated by its own pydantic model (errors at <section>.<key>); any other key is refused."""
    if not isinstance(data, dict):
        return data
    out = {k: v for k, v in data.items() if k in cls.model_fields}
    for options in models:
        out |= dict(options.model_validate({k: v for k, v in data.items() if k in options.model_fields}))
    if unknown := [k for k in data if k not in out]:
        raise sub_field_error(unknown[0], data[unknown[0]], "unknown key")
    return out


def model_folder(v: str | None) -> str | None:
    """A local transformers model folder (its config.json there), made absolute; None stays None."""
    if v is not None and not (Path(v).expanduser() / "config.json").is_file():
        raise ValueError(f"{v}: not a transformers model folder (no config.json)")
    return v if v is None else str(Path(v).expanduser().resolve())


def registered_kind(name: str, registry: dict, what: str) -> str:
    if name not in registry:
        raise ValueError(f"{name!r}: not a {what} kind (registered: {', '.join(registry)})")
    return name


def kind_rules(cfg, registry: dict):
    """The section's kind checks its own fields (registry.FieldError -> an error at <section>.<field>)."""
    try:
        registry[cfg.kind].check(cfg)
    except FieldError as e:
        raise sub_field_error(e.field, getattr(cfg, e.field), str(e)) from None
    return cfg


# -- components -----------------------------------------------------------------------------------
class ScheduleCfg(Strict):
    name: Literal["cosine", "clipped_cosine", "shifted_cosine", "interpolated_cosine"] = "cosine"
    params: dict[str, float] = Field({}, description="e.g. {image_d: 64, noise_low: 32} for interpolated_cosine")


class DataCfg(Strict):
    """The `data:` section, flat as in the YAML: a registered data kind (data/kinds.py) and the fields every kind
    declares in data/<kind>.py (gmm: shape .. seed; digits: size; parquet: path). Fields of other kinds may stay in
    the file (a sweep's base shared by axes over data.kind): they are validated and kept, and only the kind's are used."""

    model_config = ConfigDict(extra="allow")  # the registered kinds' fields; any other key is refused below
    kind: str = Field(
        "gmm", description="gmm: mixture with an exact denoiser; digits: sklearn 8x8 digits; parquet: image shards"
    )

    @model_validator(mode="before")
    @classmethod
    def _fields(cls, data):
        return with_registered_options(cls, data, (k.options for k in DATA_KINDS.values()))

    @field_validator("kind")
    @classmethod
    def _kind(cls, v):
        return registered_kind(v, DATA_KINDS, "data")

    @model_validator(mode="after")
    def _kind_rules(self):
        return kind_rules(self, DATA_KINDS)

    @property
    def fd_space(self) -> str:
        """Features of the Frechet distance: the vectors themselves (identity) for mixtures, pixels for image data."""
        return DATA_KINDS[self.kind].fd_space

    @property
    def label(self) -> str:
        """Short description for tags, e.g. gmm[16], digits8, parquet:cifar10."""
        return DATA_KINDS[self.kind].label(self)


TEACHER_ARTIFACT = "teacher.pt"  # artifact path of the checkpoint on a `multistep teacher` run


class DdpmCfg(Strict):
    """A discrete DDPM beta schedule (diffusers' DDPMScheduler fields)."""

    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = "linear"
    beta_start: PosFloat = 1e-4
    beta_end: PosFloat = 0.02
    num_train_timesteps: PosInt = 1000
    betas: list[Annotated[float, Field(gt=0, lt=1)]] | None = Field(
        None, description="explicit betas (diffusers' trained_betas)"
    )


class EdmCfg(Strict):
    """An EDM noise range: the network is D(x; sigma) with x = data + sigma * noise."""

    sigma_min: PosFloat = 0.002
    sigma_max: PosFloat = 80.0
    sigma_data: PosFloat = Field(0.5, description="recorded (EDM's preconditioning lives inside the network)")


STREAM_ABOVE = 10_000  # eval.stream auto: stream evaluations of more samples than this


class TeacherCfg(Strict):
    """analytic: exact denoiser of a gmm; checkpoint / mlflow: a network trained by `multistep teacher`;
    diffusers / torchscript / state_dict: a network trained elsewhere (docs/teachers.md). A network teacher brings the
    schedule it was trained with and the student starts as a copy of it (no warm start)."""

    kind: str = Field("analytic", description="a registered teacher kind (teachers/kinds.py)")
    schedule: ScheduleCfg = Field(
        ScheduleCfg(), description="analytic: noise schedule; imported eps/v/x0 nets without ddpm: theirs"
    )
    path: str | None = Field(
        None,
        description="checkpoint, torchscript, state_dict: a local file; diffusers: a save_pretrained folder; mlflow: set by the driver",
    )
    run_id: str | None = Field(None, description="mlflow: run id of a `multistep teacher` run")
    artifact_path: str = Field(TEACHER_ARTIFACT, description="mlflow: the checkpoint's artifact path on that run")
    builder: str | None = Field(
        None, description='state_dict: "package.module:callable" that builds the network (importable here)'
    )
    builder_args: dict[str, Any] = Field({}, description="state_dict: keyword arguments of the builder")
    parameterization: Literal["eps", "v", "x0", "edm", "flow"] | None = Field(
        None, description="imported: what the network returns (diffusers: from its scheduler's prediction_type)"
    )
    ddpm: DdpmCfg | None = Field(
        None, description="imported eps/v/x0 nets: the discrete schedule (diffusers: its scheduler config)"
    )
    edm: EdmCfg = Field(EdmCfg(), description="parameterization edm: the sigma range of net(x, sigma[, labels])")
    time_scale: PosFloat = Field(
        1.0, description="vp and flow nets: the network receives its continuous time times this (e.g. 1000)"
    )
    clip_sample: Annotated[float, Field(ge=0)] | None = Field(
        None, description="clip the teacher's x_hat to [-c, c] (diffusers: clip_sample_range)"
    )
    num_classes: PosInt | None = Field(
        None, description="imported class-conditional nets: labels 0 .. num_classes - 1 (diffusers: num_class_embeds)"
    )
    null_label: Annotated[int, Field(ge=0)] | None = Field(
        None, description='the label the network was trained with for "no class" (guidance)'
    )
    logsnr_min: float | None = Field(
        None, description="imported: lowest log-SNR of the student's schedule; default: the teacher's lowest"
    )
    check: bool = Field(
        True, description="imported: the plausibility check at load (x_hat at the lowest and highest noise, finite)"
    )

    @field_validator("kind")
    @classmethod
    def _kind(cls, v):
        return registered_kind(v, TEACHER_KINDS, "teacher")

    @model_validator(mode="after")
    def _kind_rules(self):
        return kind_rules(self, TEACHER_KINDS)

    @property
    def imported(self) -> bool:
        """Trained elsewhere (nets/imported.py): diffusers, torchscript, state_dict."""
        return TEACHER_KINDS[self.kind].imported


class LoraCfg(Strict):
    """Low-rank adapters on the student's copy of the teacher (nets/lora.py): only they train and are saved."""

    rank: PosInt = 8
    alpha: PosFloat = Field(8.0, description="the adapters' scale is alpha / rank")
    target_modules: list[str] = Field(
        ["to_q", "to_k", "to_v", "to_out.0"], description="module-name suffixes (diffusers attention)"
    )


class StudentCfg(Strict):
    """The student network for an analytic teacher; with a network teacher the student is a copy of it, unless
    copy_teacher is false (then this MLP, warm-started by v-loss regression onto the teacher)."""

    net: Literal["mlp", "unet"] = Field(
        "mlp", description="mlp: on flattened samples; unet: images [C, H, W] (nets/unet.py)"
    )
    copy_teacher: bool = Field(
        True, description="imported teachers: start the student as a copy of their network (the paper); false: this MLP"
    )
    hidden: PosInt = Field(256, description="MLP width")
    depth: PosInt = Field(3, description="MLP hidden layers")
    base_ch: PosInt = Field(32, description="UNet channels at full resolution")
    ch_mult: list[PosInt] = Field([1, 2], description="UNet channel multiplier per level (len - 1 downsamplings)")
    num_res_blocks: PosInt = Field(1, description="UNet ResBlocks per level")
    attn_resolutions: list[PosInt] = Field([], description="UNet spatial sizes with self-attention")
    time_features: Literal["octave", "sinusoid"] = Field(
        "octave", description="octave: sin, cos of 2^k pi t; sinusoid: DDPM-style of 1000 t"
    )
    time_dim: PosInt | None = Field(None, description="time features (default: 16 octave = 8 octaves, 64 sinusoid)")
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0
    lora: LoraCfg | None = Field(
        None, description="a copied teacher: train LoRA adapters only (peft) instead of every weight"
    )
    init_iterations: Annotated[int, Field(ge=0)] = Field(
        WarmStart.iterations,
        description="analytic teacher (or copy_teacher: false): warm start by v-loss regression onto it (the paper starts from the diffusion model), at most this many iterations; a copied teacher needs none. Defaults: train/loop.py WarmStart",
    )
    init_learning_rate: PosFloat = WarmStart.lr
    init_optimizer: Literal["adam", "adamw"] = Field(WarmStart.optimizer, description="warm start optimiser")
    init_schedule: Literal["constant", "cosine"] = Field(
        WarmStart.schedule, description="cosine: annealed over init_iterations"
    )
    init_check_every: PosInt = Field(
        WarmStart.check_every, description="iterations between measurements of its v-space error"
    )
    init_patience: Annotated[int, Field(ge=0)] = Field(
        WarmStart.patience, description="stop after this many measurements without"
    )
    init_min_improvement: Annotated[float, Field(ge=0, lt=1)] = Field(
        WarmStart.min_improvement, description="init_min_improvement (0: run to the cap) relative, that counts"
    )

    @model_validator(mode="after")
    def _time_dim(self):
        if self.time_dim is None:
            self.time_dim = 16 if self.time_features == "octave" else 64
        if self.time_features == "octave" and self.time_dim % 2:
            raise sub_field_error("time_dim", self.time_dim, "octave features come in sin/cos pairs: an even number")
        return self


class MethodCfg(Strict):
    """The `method:` section, flat as in the YAML: the keys every method shares, plus the options each registered
    method declares in methods/<name>.py (base.MethodSpec). A trial may carry other methods' options (a sweep's base
    shared by axes over method.name): they are validated and kept, and only the named method's are used."""

    model_config = ConfigDict(extra="allow")  # the registered methods' options; any other key is refused below
    name: str = Field("mcm", description="a registered method: mcm (S = 1: CD/CT), tract, progressive, scm, flowmap")
    mode: Literal["distill", "train"] = Field("distill", description="distil the teacher, or train on data (mcm: MCT)")
    student_steps: PosInt = Field(4, description="S: sampling steps of the (final) student")
    loss_weight: Literal["snr+1", "max(snr,1)", "snr"] | None = Field(
        None, description="default: snr+1 (mcm), max(snr,1) (tract, pd)"
    )
    distance: Literal["pseudo_huber", "pseudo_huber_ict", "l2sq", "l2sq_sum"] | None = Field(
        None, description="default: pseudo_huber / l2sq_sum / l2sq"
    )
    huber_eps: PosFloat = Field(1e-4, description="epsilon of pseudo_huber")
    clip_x: Annotated[float, Field(ge=0)] = Field(
        0.0, description="clip x_hat to [-c, c] inside target steps (tract; 0 = off)"
    )

    @model_validator(mode="before")
    @classmethod
    def _options(cls, data):
        return with_registered_options(cls, data, (spec.options for spec in METHODS.values()))

    @field_validator("name")
    @classmethod
    def _registered(cls, name):
        if name not in METHODS:
            raise ValueError(f"unknown method {name!r}; registered: {', '.join(METHODS)}")
        return name

    @model_validator(mode="after")
    def _rules(self):
        for spec in METHODS.values():
            try:
                spec.check(self)
            except OptionError as e:
                raise sub_field_error(e.field, getattr(self, e.field), str(e)) from None
        return self


class TrainCfg(Strict):
    iterations: PosInt = 3000
    batch_size: PosInt = 512
    learning_rate: PosFloat = 2e-4
    grad_clip: Annotated[float, Field(ge=0)] = Field(1.0, description="0 disables clipping")
    eval_ema: Annotated[float, Field(ge=0, lt=1)] = Field(0.999, description="EMA of weights used for evaluation")
    log_every: PosInt = Field(100, description="iterations between MLflow metric batches")
    checkpoint_every: PosInt = Field(1000, description="iterations between checkpoints")
    seed: int = 0
    precision: Literal["fp32", "bf16"] = Field(
        "fp32", description="bf16: networks under autocast (GPU); targets stay float32/64"
    )
    channels_last: bool = Field(False, description="image networks in channels_last memory format (GPU)")
    compile: bool = Field(False, description="torch.compile the networks (paid once per trial; needs a toolchain)")


class EvalCfg(Strict):
    samples: PosInt = Field(5000, description="samples per evaluation (fixed noise per sample index)")
    teacher_steps: list[PosInt] = Field(
        [1, 2, 4, 8, 16, 32, 64, 128, 256, 512], description="teacher curve, once per sweep"
    )
    ode_steps: PosInt = Field(1024, description="teacher DDIM steps for the paired-error reference")
    ode_samples: Annotated[int, Field(ge=0)] | None = Field(
        None,
        description="rows of the paired ODE metric (ode_l2_*): the first of the fixed noise rows; None: min(samples, 2000); 0: off",
    )
    seed: int = 1234
    bootstrap: Annotated[int, Field(ge=0)] = Field(
        0,
        description="resamples for each metric's bootstrap standard error (results column se; 0 = off; regression `ci` tolerances need it)",
    )
    extractor: Literal["auto", "identity", "pixel", "classifier", "inception"] = Field(
        "auto",
        description="features of FD and KID: auto = identity (gmm) / pixel (images); classifier = a small MLP trained on the labelled data; inception = the FID detector at inception_path (metrics fid_* / kid_*)",
    )
    inception_path: str | None = Field(
        None, description="local TorchScript FID detector (inception-2015-12-05.pt); nothing is downloaded"
    )
    reference: str | None = Field(
        None,
        validate_default=True,
        description="a local .npz of reference statistics (mu, sigma[, features]: EDM fid.py, pytorch-fid, clean-fid): FD against them; KID needs its features",
    )
    batch_size: PosInt = Field(
        2048, description="samples per sampling batch of an evaluation (each batch on the trial's device)"
    )
    kid_subsets: Annotated[int, Field(ge=0)] = Field(
        10,
        description="KID (unbiased, cubic kernel): mean over this many disjoint subsets of min(1000, samples / kid_subsets) rows, SE in the se column; 0 = off",
    )
    diversity_rows: Annotated[int, Field(ge=0)] = Field(
        5000,
        description="diversity beside FD (metrics/diversity.py): k-NN precision / recall on the first min(diversity_rows, samples) rows of each point and of the reference (+ exact mode coverage for mixture data); 0 = off",
    )
    knn_k: PosInt = Field(3, description="the k of the k-NN manifolds (Kynkaanniemi et al.)")

    @field_validator("reference")
    @classmethod
    def _reference(cls, v):
        if v is None:
            return v
        from multistep.metrics.reference import load

        load(Path(v).expanduser())  # readable, mu and sigma of matching shapes (ValueError: one line)
        return str(Path(v).expanduser().resolve())

    @model_validator(mode="after")
    def _inception(self):
        if self.extractor == "inception":
            if not self.inception_path:
                raise sub_field_error(
                    "inception_path", None, "extractor: inception needs the local path of the TorchScript detector"
                )
            if not Path(self.inception_path).expanduser().is_file():
                raise sub_field_error("inception_path", self.inception_path, f"file not found: {self.inception_path}")
        return self

    clip_path: str | None = Field(
        None,
        description="text alignment of caption-conditioned samples: clip_score (100 max(cos, 0) of CLIP's image and caption embeddings, metrics/clip.py) with a local transformers CLIPModel folder (save_pretrained); nothing downloaded",
    )

    _clip_folder = field_validator("clip_path")(lambda cls, v: model_folder(v))

    prompts: str | None = Field(
        None,
        description="caption data: a text file of prompts (one caption of the data per line) the evaluation cycles through, each row with its own fixed noise; default: captions drawn from the data with the eval seed",
    )

    @field_validator("prompts")
    @classmethod
    def _prompt_file(cls, v):
        if v is not None and not Path(v).expanduser().is_file():
            raise ValueError(f"file not found: {v}")
        return v if v is None else str(Path(v).expanduser().resolve())

    repeats: PosInt = Field(
        1,
        description="evaluations from this many noise seeds: each metric their mean, <metric>_repeat_std their std (EDM's practice)",
    )
    stream: Literal["auto", "on", "off"] = Field(
        "auto",
        description="streaming evaluation (memory bounded in samples; metrics/streaming.py): auto = above 10,000 samples",
    )
    keep_rows: Annotated[int, Field(ge=0)] = Field(
        0,
        description="features of the first rows of every final point kept as artifacts eval_rows/<label>_<steps>.npy (+ the reference's, the floor's, every teacher point's) for `multistep claims`; 0 = off",
    )

    @property
    def streaming(self) -> bool:
        return self.stream == "on" or (self.stream == "auto" and self.samples > STREAM_ABOVE)

    @property
    def ode_rows(self) -> int:
        """How many noise rows get the teacher's ODE solution (the paired metric's sample count)."""
        return min(self.samples, 2000 if self.ode_samples is None else self.ode_samples)

    @model_validator(mode="after")
    def _stream(self):
        if self.streaming and self.bootstrap:
            raise sub_field_error(
                "bootstrap",
                self.bootstrap,
                "resamples the samples held in memory: not with a streaming evaluation (stream: off)",
            )
        return self

    @model_validator(mode="after")
    def _keep(self):
        if self.keep_rows > self.samples:
            raise sub_field_error("keep_rows", self.keep_rows, f"more rows than eval.samples ({self.samples})")
        return self

    @model_validator(mode="after")
    def _sizes(self):
        if self.samples < 2:  # a covariance (FD) needs two samples
            raise sub_field_error("samples", self.samples, "an evaluation needs at least 2 samples")
        if self.kid_subsets and self.samples < 2 * self.kid_subsets:
            raise sub_field_error(
                "samples",
                self.samples,
                f"KID's {self.kid_subsets} disjoint subsets need at least {2 * self.kid_subsets} samples "
                "(or kid_subsets: 0)",
            )
        return self

    @field_validator("bootstrap", "kid_subsets")
    @classmethod
    def _two_or_none(cls, v, info):
        if v == 1:
            raise ValueError(
                f"a standard error needs at least 2 {'resamples' if info.field_name == 'bootstrap' else 'subsets'} (0 turns it off)"
            )
        return v


class WorkerResourcesCfg(Strict):
    """The workers of one training run (a sweep trial or a teacher) and what each of them holds."""

    num_workers: PosInt = Field(1, description="Ray Train workers per run (data parallel, gradients averaged)")
    use_gpu: bool = False
    cpus_per_worker: PosFloat = 1
    gpus_per_worker: Annotated[float, Field(ge=0)] = Field(
        0, description="fractional packs single-worker trials on one GPU"
    )

    @property
    def per_worker(self) -> dict[str, float]:
        """Ray resources of one worker: its CPUs and, with use_gpu, its GPU (or share of one; 0 means 1)."""
        return {"CPU": self.cpus_per_worker} | ({"GPU": self.gpus_per_worker or 1} if self.use_gpu else {})


class ResourcesCfg(WorkerResourcesCfg):
    max_concurrent_trials: PosInt = 2
    max_failures: Annotated[int, Field(ge=0)] = Field(
        1, description="worker-group (runner tune: trial) restarts per trial"
    )
    runner: Literal["auto", "tune", "train"] = Field(
        "auto", description="tune: the Tune trial trains itself (1 worker, no worker group"
    )
    #   to start: ~20 s less per trial on 2 cores); train: a TorchTrainer worker group; auto: tune for 1 worker, else train

    @model_validator(mode="after")
    def _runner(self):
        if self.runner == "tune" and self.num_workers > 1:
            raise ValueError(
                "runner: tune trains in the trial's own process (1 worker); use train or auto for num_workers > 1"
            )
        return self

    @property
    def trial_trains_itself(self) -> bool:
        """True when the Tune trial runs the training loop itself instead of a TorchTrainer worker group."""
        return self.runner == "tune" or (self.runner == "auto" and self.num_workers == 1)


PBT_MUTABLE = Literal["train.learning_rate", "method.anneal.end"]  # what PBT may change in a running trial


class SchedulerCfg(Strict):
    # asha: stops trials whose proxy metric lags at each rung; pbt: lagging trials continue from a leader's checkpoint with perturbed hyperparameters
    name: Literal["fifo", "asha", "pbt"] = "fifo"
    proxy_samples: PosInt = Field(1000, description="samples of the cheap in-training proxy (logged as proxy_<metric>)")
    grace_checkpoints: PosInt = Field(1, description="asha: checkpoints every trial runs before it may be stopped")
    reduction_factor: Annotated[float, Field(gt=1)] = Field(
        2, description="asha: keep 1/reduction_factor of trials per rung"
    )
    perturb_checkpoints: PosInt = Field(1, description="pbt: checkpoints between a trial's exploit / explore decisions")
    quantile_fraction: Annotated[float, Field(gt=0, le=0.5)] = Field(
        0.25, description="pbt: the bottom fraction (by proxy metric) that clones a trial of the top fraction"
    )
    resample_probability: Annotated[float, Field(ge=0, le=1)] = Field(
        0.25,
        description="pbt: chance a cloned value is redrawn from its range instead of scaled by 0.8 / 1.2 (or shifted one choice)",
    )
    synch: bool = Field(
        False,
        description="pbt: decide only when the whole population has reached the interval (paused trials wait; async: at once)",
    )
    mutations: dict[PBT_MUTABLE, Axis] = Field(
        {},
        description="pbt: what explore changes, as choice / uniform / loguniform axes (trials start from their own values)",
    )

    @model_validator(mode="after")
    def _mutations(self):
        if self.name == "pbt" and not self.mutations:
            raise sub_field_error("mutations", {}, "pbt needs at least one of train.learning_rate, method.anneal.end")
        for k, a in self.mutations.items():
            if a.grid is not None:
                raise sub_field_error(
                    "mutations", k, f"{k}: give choice, uniform or loguniform (grid is for search axes)"
                )
        return self


Objective = Literal[
    "fd", "kid", "swd", "ode", "nfe", "wall_seconds"
]  # a metric family of the final evaluation, or a cost


class SearchAlgCfg(Strict):
    """How trials are chosen: grid (every combination and draw planned up front) or an adaptive Ray Tune search."""

    name: Literal["grid", "optuna"] = Field(
        "grid", description="optuna: Tune's OptunaSearch proposes num_samples trials in turn"
    )
    sampler: Literal["tpe", "nsga2"] = Field("tpe", description="tpe: one objective; nsga2: several (a Pareto front)")
    metric: Objective | list[Objective] = Field(
        "fd", description="what it minimises: a final metric family (at the trial's own S) or a cost"
    )
    mode: Literal["min", "max"] | list[Literal["min", "max"]] = Field("min", description="one per metric")
    seed: int | None = Field(None, description="the sampler's seed (default train.seed): the same proposals in a rerun")

    @model_validator(mode="after")
    def _objectives(self):
        metrics = self.metrics
        if len(set(metrics)) != len(metrics):
            raise sub_field_error("metric", self.metric, "names a metric twice")
        modes = self.mode if isinstance(self.mode, list) else [self.mode] * len(metrics)
        if len(modes) != len(metrics):
            raise sub_field_error("mode", self.mode, f"give one mode per metric ({len(metrics)})")
        if self.name == "optuna" and self.sampler == "tpe" and len(metrics) > 1:
            raise sub_field_error("sampler", "tpe", "several metrics need sampler: nsga2 (multi-objective)")
        self.mode = modes if isinstance(self.metric, list) else modes[0]
        return self

    @property
    def metrics(self) -> list[str]:
        return self.metric if isinstance(self.metric, list) else [self.metric]

    @property
    def adaptive(self) -> bool:
        return self.name != "grid"


class Axis(Strict):
    """One search axis: exactly one of grid / choice / loguniform / uniform."""

    grid: list[Any] | None = Field(None, description="every value, crossed with the other grids")
    choice: list[Any] | None = Field(None, description="one value drawn per sample")
    loguniform: list[PosFloat] | None = Field(None, description="[low, high], drawn per sample")
    uniform: list[float] | None = Field(None, description="[low, high], drawn per sample")

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
    def discrete(self) -> list[Any] | None:
        """The values of a grid or choice axis; None for a range."""
        return self.grid if self.grid is not None else self.choice

    def draw(self, rng: np.random.Generator) -> Any:
        """One random value of a choice or range axis."""
        if self.choice is not None:
            return self.choice[int(rng.integers(len(self.choice)))]
        if self.loguniform is not None:
            return float(np.exp(rng.uniform(np.log(self.loguniform[0]), np.log(self.loguniform[1]))))
        return float(rng.uniform(*self.uniform))


class ToleranceCfg(Strict):
    """How much worse (higher) a point may get before it is a regression: the largest of the allowances given."""

    abs: Annotated[float, Field(ge=0)] = Field(0.0, description="in the metric's own units")
    rel: Annotated[float, Field(ge=0)] = Field(0.0, description="as a fraction of the baseline value")
    ci: Annotated[float, Field(gt=0, lt=1)] | None = Field(
        None,
        description="e.g. 0.95: also within that two-sided confidence of the difference (se: eval.bootstrap > 0; kid: its own)",
    )


class RegressionCfg(Strict):
    """`multistep regress`: which metrics are compared with the baseline, and how strictly (docs/regression.md)."""

    tolerances: Annotated[dict[Literal["fd", "kid", "swd", "ode"], ToleranceCfg], Field(min_length=1)] = Field(
        description="metric family -> tolerance; families left out are not compared"
    )
    teacher: bool = Field(
        True, description="also compare the teacher's own curve (teacher_ddim / teacher_addim points)"
    )


class TrialCfg(Strict):
    """Everything one trial needs (a sweep file minus its search section)."""

    label: str = Field("", description="name in tables/plots; default from the method (mcd, mct, tract, pd)")
    data: DataCfg = DataCfg()
    teacher: TeacherCfg = Field(TeacherCfg(), validate_default=True)
    student: StudentCfg = StudentCfg()
    method: MethodCfg = MethodCfg()
    train: TrainCfg = TrainCfg()
    eval: EvalCfg = EvalCfg()

    @field_validator("teacher")
    @classmethod
    def _teacher_fits_data(cls, t, info):
        d = info.data.get("data")
        if TEACHER_KINDS[t.kind].exact and d is not None and not DATA_KINDS[d.kind].mixture:
            raise ValueError(
                f"the analytic teacher is the exact denoiser of a gmm; data kind {d.kind} needs a trained "
                "teacher (kind: checkpoint with path, or kind: mlflow with run_id; see `multistep teacher`)"
            )
        return t

    @field_validator("student")
    @classmethod
    def _student_fits_data(cls, s, info):
        d, t = info.data.get("data"), info.data.get("teacher")
        if s.lora is not None and t is not None and not TEACHER_KINDS[t.kind].copies(SimpleNamespace(student=s)):
            raise sub_field_error(
                "lora", "", "adapters go on a copy of the teacher's network: a network teacher, copy_teacher: true"
            )
        if s.net != "unet" or d is None or DATA_KINDS[d.kind].files:  # images in files: checked when the UNet is built
            return s
        shape = list(DATA_KINDS[d.kind].shape(d))
        down = 2 ** (len(s.ch_mult) - 1)
        if len(shape) != 3 or shape[1] != shape[2] or shape[1] % down:
            raise sub_field_error(
                "net",
                s.net,
                f"needs square images [C, H, H] with H divisible by {down} (ch_mult {s.ch_mult}); data shape is {shape}",
            )
        return s

    @field_validator("method")
    @classmethod
    def _guidance_fits_teacher(cls, m, info):
        t, d = info.data.get("teacher"), info.data.get("data")
        if (
            m.guidance > 0
            and t is not None
            and d is not None
            and (TEACHER_KINDS[t.kind].exact or DATA_KINDS[d.kind].labelled is False)
        ):
            raise sub_field_error(
                "guidance",
                m.guidance,
                "needs a class-conditional network teacher and labelled data "
                f"(teacher.kind: {t.kind}, data.kind: {d.kind} has no class labels)",
            )
        return m

    @field_validator("eval")
    @classmethod
    def _extractor_fits_data(cls, e, info):
        d = info.data.get("data")
        if d is not None and (err := extractor_error(d, e)):
            raise sub_field_error("extractor", e.extractor, err)
        return e

    @property
    def feature_space(self) -> str:
        """The resolved eval.extractor: what FD and KID compare (identity, pixel, classifier or inception)."""
        return self.data.fd_space if self.eval.extractor == "auto" else self.eval.extractor


def extractor_error(d: DataCfg, e: EvalCfg) -> str | None:
    """Why eval.extractor does not fit the data kind, or None."""
    fits = ("auto", "identity") if d.fd_space == "identity" else ("auto", "pixel", "classifier", "inception")
    if e.extractor not in fits:
        return f"{e.extractor} does not fit data.kind {d.kind} (gmm: auto or identity; images: auto, pixel, classifier or inception)"
    return None


class SweepCfg(TrialCfg):
    name: RunName = "sweep"
    experiment: str = Field("multistep", description="MLflow experiment")
    description: str = ""
    resources: ResourcesCfg = ResourcesCfg()
    scheduler: SchedulerCfg = SchedulerCfg()
    search: dict[str, Axis] | list[dict[str, Axis]] = Field(
        {}, description="dotted config path -> axis; a list of such blocks = their union"
    )
    search_alg: SearchAlgCfg = Field(SearchAlgCfg(), description="grid (default) or optuna (docs/search.md)")
    num_samples: PosInt = Field(
        1, description="grid: draws of the random axes (grids are crossed with them); optuna: trials in all"
    )
    max_trials: PosInt = Field(256, description="refuse sweeps that expand to more trials")
    regression: RegressionCfg | None = Field(
        None, description="tolerances of `multistep regress` (ignored by `multistep sweep`)"
    )
