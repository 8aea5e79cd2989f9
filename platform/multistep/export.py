"""`multistep export STATE.pt --out DIR`: a distilled student as files other code can load (docs/export.md).

Formats:
  safetensors  DIR/model.safetensors (the student's EMA weights) + DIR/multistep.json (everything needed to rebuild
               and sample it: network, denoiser, schedule, S, time grid, labels, shape, platform version);
               `load(DIR)` rebuilds it.
  torchscript  DIR/sampler.pt: a scripted module whose sample(noise[, labels]) runs MCM Algorithm 2 with S baked in
               (the network traced, the adapter's affine maps and the DDIM steps precomputed in float64).
  diffusers    a diffusers DDIMPipeline folder (unet/ + scheduler/, trailing timesteps) for a student of a
               diffusers teacher: diffusers' own from_pretrained loads it, and S-step DDIM reproduces the samples.
Each export is reloaded and its samples compared with the platform's own from the same noise before it is
reported; the folder is written staged (a failure leaves nothing).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from multistep.config import ConfigError
from multistep.teachers import teacher_kind

log = logging.getLogger(__name__)

FORMATS = ("safetensors", "torchscript", "diffusers")
SPEC = "multistep.json"
FORMAT_VERSION = 1
TOLERANCE = 1e-5  # relative max difference of a reloaded export's samples from the platform's


# -- what a student is ------------------------------------------------------------------------------
def schedule_dict(s) -> dict:
    return dataclasses.asdict(s)


def schedule_from(d: dict):
    from multistep.diffusion.schedules import SCHEDULES

    kw = dict(d)
    name = kw.pop("name")
    if "logsnr_k" in kw:
        kw["logsnr_k"] = tuple(kw["logsnr_k"])
    return SCHEDULES[name](**kw)


def denoiser_spec(f) -> dict:
    """How the student's denoiser reads its network (VDenoiser: v on the schedule; Adapted: a foreign network)."""
    from multistep.nets.adapter import Adapted

    if not isinstance(f, Adapted):
        return {"kind": "v"}
    t = f.time
    time = {"kind": t.kind, "sigma_min": t.sigma_min, "sigma_max": t.sigma_max, "time_scale": t.time_scale}
    if t.logsnr_k is not None:
        time["logsnr_k"] = t.logsnr_k.tolist()
    if t.schedule is not None:
        time["schedule"] = schedule_dict(t.schedule)
    return {
        "kind": "adapted",
        "parameterization": f.parameterization,
        "time": time,
        "num_classes": f.num_classes,
        "null_label": f.null_label,
        "clip_sample": f.clip_sample,
    }


def network_spec(tc, f) -> dict:
    """How to rebuild the student's network without this platform's trial config."""
    t = tc.teacher
    flow_map = {"target_input": True} if getattr(f, "flow_map", False) else {}  # a flow-map student's second time
    kind = teacher_kind(t)
    if not kind.copies(tc):
        from multistep.train.build import sample_shape, student_net_cfg

        return {"kind": "platform", "net": student_net_cfg(tc.student, sample_shape(tc.data)) | flow_map}
    spec = kind.network(tc, f)
    return spec | {"net": spec["net"] | flow_map} if "net" in spec else spec  # a platform network's config


def _platform_network(spec: dict) -> nn.Module:
    from multistep.train.teacher import build_net

    return build_net(spec["net"])


def _diffusers_network(spec: dict) -> nn.Module:
    from diffusers import UNet2DModel

    from multistep.nets.imported import DiffusersUNet

    return DiffusersUNet(UNet2DModel.from_config(spec["config"]))


def _builder_network(spec: dict) -> nn.Module:
    import importlib

    mod, _, fn = spec["builder"].partition(":")
    return getattr(importlib.import_module(mod), fn)(**spec["builder_args"])


# How multistep.json's "network" is rebuilt, by its kind (a TorchScript network has no entry: its program is the export).
NETWORKS = {"platform": _platform_network, "diffusers": _diffusers_network, "builder": _builder_network}


def build_network(spec: dict) -> nn.Module:
    if spec["kind"] not in NETWORKS:
        raise ValueError(
            f"a {spec['kind']} network cannot be rebuilt from weights; export it with --format torchscript"
        )
    return NETWORKS[spec["kind"]](spec)


def build_denoiser(spec: dict) -> nn.Module:
    """The student denoiser of a multistep.json (weights not loaded)."""
    from multistep.nets.adapter import Adapted, Time
    from multistep.nets.mlp import VDenoiser

    net, sched = build_network(spec["network"]), schedule_from(spec["schedule"])
    d = spec["denoiser"]
    if d["kind"] == "v":
        return VDenoiser(net, sched)
    t = dict(d["time"])
    lk, ts = t.pop("logsnr_k", None), t.pop("schedule", None)
    time = Time.of(
        **t, logsnr_k=None if lk is None else torch.tensor(lk, dtype=torch.float64), schedule=ts and schedule_from(ts)
    )
    return Adapted(net, sched, time, d["parameterization"], d["num_classes"], d["null_label"], d["clip_sample"])


def load(folder: str | Path) -> tuple[nn.Module, dict]:
    """(the student denoiser with its weights, in eval mode; its multistep.json) of a safetensors export."""
    from safetensors.torch import load_file

    folder = Path(folder)
    spec = json.loads((folder / SPEC).read_text())
    f = build_denoiser(spec)
    f.load_state_dict(load_file(str(folder / "model.safetensors")))
    return f.eval().requires_grad_(False), spec


# -- the TorchScript sampler ------------------------------------------------------------------------
class WithLabels(nn.Module):
    """net(x, t, y) for every network, so the scripted sampler has one call (an unconditional net ignores y)."""

    def __init__(self, net: nn.Module, conditional: bool):
        super().__init__()
        self.net, self.conditional = net, conditional

    def forward(self, x, t, y):
        return self.net(x, t, y) if self.conditional else self.net(x, t)


class MCMSampler(nn.Module):
    """MCM Algorithm 2 with S baked in. Step k (t = (S - k) / S -> s = (S - k - 1) / S): the network sees
    (a_in z, time_in), x_hat = c_z z + c_o out (clipped if clip > 0), z <- alpha_s x_hat + sigma_s (z - alpha_t x_hat)
    / sigma_t. Everything but the network in float64; labels equal to num_classes (no class) -> null_label."""

    def __init__(self, net, table: torch.Tensor, time_in: torch.Tensor, clip: float, num_classes: int, null_label: int):
        super().__init__()
        self.net = net
        self.register_buffer("table", table)  # (S, 7) float64: a_in, c_z, c_o, alpha_t, sigma_t, alpha_s, sigma_s
        self.register_buffer("time_in", time_in)  # (S,) in the network's time dtype
        self.clip, self.num_classes, self.null_label = clip, num_classes, null_label

    def forward(self, noise: torch.Tensor) -> torch.Tensor:
        return self.sample(noise, None)

    @torch.jit.export
    def sample(self, noise: torch.Tensor, labels: Optional[torch.Tensor] = None) -> torch.Tensor:  # noqa: UP045
        z = noise.to(torch.float64)
        n = z.shape[0]
        y = torch.full([n], self.null_label, dtype=torch.long, device=z.device)
        if labels is not None:
            y = labels.to(z.device).long()
            y = torch.where(y == self.num_classes, torch.full_like(y, self.null_label), y)
        for k in range(self.table.shape[0]):
            r = self.table[k]
            out = self.net((r[0] * z).to(torch.float32), self.time_in[k].expand(n), y)
            x = r[1] * z + r[2] * out.to(torch.float64)
            if self.clip > 0:
                x = x.clamp(-self.clip, self.clip)
            z = r[5] * x + r[6] * ((z - r[3] * x) / r[4])
        return z.to(torch.float32)


def scripted_sampler(f, S: int, shape: tuple, num_classes: int | None) -> torch.jit.ScriptModule:
    """The student f as a self-contained TorchScript MCM sampler (its network traced, in float32)."""
    rows, times = [], []
    for k in range(S, 0, -1):
        t, s = torch.tensor([k / S], dtype=torch.float64), torch.tensor([(k - 1) / S], dtype=torch.float64)
        a_in, time_in, c_z, c_o = f.affine(t)
        rows.append(torch.cat([a_in, c_z, c_o, *f.schedule.alpha_sigma(t), *f.schedule.alpha_sigma(s)]).double())
        times.append(time_in)
    time_in = torch.cat(times).to(f.time_dtype or torch.float64)
    null = getattr(f, "null_label", None)
    null = (num_classes or 0) if null is None else null  # a platform net's null class is its num_classes
    net = WithLabels(f.net.eval(), num_classes is not None)
    example = (torch.randn(2, *shape), time_in[:1].expand(2).clone(), torch.zeros(2, dtype=torch.long))
    traced = torch.jit.trace(net, example, check_trace=False)
    clip = float(f.clip_sample or 0.0)
    return torch.jit.script(MCMSampler(traced, torch.stack(rows), time_in, clip, int(num_classes or -1), int(null)))


# -- the command ------------------------------------------------------------------------------------
def platform_samples(f, schedule, S: int, noise: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    """What `multistep sample STATE.pt --noise ...` returns: MCM Algorithm 2 in float64 (a flow-map student: its S
    jumps), as float32."""
    from multistep.diffusion.samplers import flowmap_sample, mcm_sample
    from multistep.methods.base import conditioned, targeted

    if getattr(f, "flow_map", False):
        return flowmap_sample(targeted(f, labels), schedule, noise.double(), S)[0].float()
    return mcm_sample(conditioned(f, labels), schedule, noise.double(), S)[0].float()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-12))


def student_spec(tc, c, state, blob: dict, f) -> dict:
    """multistep.json: everything needed to rebuild and sample the student without the trial config."""
    from multistep.train.build import teacher_classes

    S = tc.method.student_steps
    shape = tuple(c.data.shape) if c.data is not None else tuple(tc.data.shape)
    spec = {
        "format": "multistep-student",
        "version": FORMAT_VERSION,
        "platform_version": _version(),
        "method": state.method.label if hasattr(state.method, "label") else tc.method.name,
        "student_steps": S,
        "time_grid": [k_ / S for k_ in range(S, -1, -1)],  # t of each step, 1 -> 0: MCM Algorithm 2
        "shape": list(shape),
        "num_classes": teacher_classes(c.teacher),
        "sample_space": "the data's: x_hat of the teacher (images in [-1, 1])",
        "network": network_spec(tc, f),
        "denoiser": denoiser_spec(f),
        "schedule": schedule_dict(c.schedule),
        "trial_run_id": blob.get("run_id"),
        "iteration": int(blob["state"].get("iteration", 0)),
    }
    if getattr(f, "flow_map", False):  # any step count: `multistep sample DIR --steps K`
        spec |= {"sampler": "flowmap", "time_grid": "t_k = k / K for any K (jumps t_k -> t_(k-1))"}
    return spec


def _check_format(fmt: str, p: Path, spec: dict, text_to_image, lora_only: bool, lora: bool) -> None:
    """The formats a student can be written in (a ConfigError naming the flag otherwise)."""
    net = spec["network"]["kind"]
    if text_to_image and fmt != "diffusers":
        raise ConfigError(f"--format {fmt}: {p} distils a text-to-image pipeline; use --format diffusers")
    if lora_only and not (text_to_image and lora):
        raise ConfigError(f"--lora-only: {p} is not a LoRA student of a text-to-image pipeline")
    if spec.get("sampler") == "flowmap" and fmt != "safetensors":
        raise ConfigError(
            f"--format {fmt}: {p} is a flow-map student ({spec['method']}), whose jumps take a target time "
            "that TorchScript's MCM sampler and diffusers' schedulers do not pass; use --format safetensors"
        )
    if fmt == "safetensors" and net == "torchscript":
        raise ConfigError(
            f"--format safetensors: {p} is a student of a TorchScript teacher, whose architecture lives only in its TorchScript file; use --format torchscript"
        )
    if fmt == "diffusers" and net != "diffusers":
        raise ConfigError(f"--format diffusers: {p} is not a student of a diffusers teacher (its network is {net})")
    if fmt == "diffusers" and spec["denoiser"]["time"]["kind"] != "ddpm":
        raise ConfigError(
            "--format diffusers: the student's teacher was not read on its DDPM schedule (teacher.logsnr_min set)"
        )


def _write(fmt: str, out: Path, f, c, spec: dict, noise, labels, text_to_image, lora_only: bool):
    """Write the export into `out`; returns the reloaded export's samples from `noise` (and `labels`)."""
    S, k = spec["student_steps"], spec["num_classes"]
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file({n: v.contiguous() for n, v in f.state_dict().items()}, str(out / "model.safetensors"))
        (out / SPEC).write_text(json.dumps(spec, indent=2))
        g2, _ = load(out)
        return platform_samples(g2, schedule_from(spec["schedule"]), S, noise, labels)
    if fmt == "torchscript":
        torch.jit.save(scripted_sampler(f, S, tuple(spec["shape"]), k), str(out / "sampler.pt"))
        (out / SPEC).write_text(json.dumps(spec | {"sampler": "sampler.pt"}, indent=2))
        return torch.jit.load(str(out / "sampler.pt")).sample(noise, labels)
    if text_to_image:
        got = _pipeline_export(f, text_to_image, S, out, noise, [c.data.captions[i] for i in labels], lora_only)
        (out / SPEC).write_text(json.dumps(spec | {"captions": c.data.captions}, indent=2))
        return got
    got = _diffusers_export(f, c, S, out, noise, labels)
    (out / SPEC).write_text(json.dumps(spec, indent=2))
    return got


def export(
    state: str,
    out: str,
    fmt: str = "safetensors",
    lora_only: bool = False,
    register_as: str | None = None,
    tracking_uri: str | None = None,
) -> int:
    """Write the student of a trial checkpoint `state` into the new or empty folder `out` in format `fmt`, reload it
    and check its samples against the platform's (RuntimeError beyond TOLERANCE); with register_as, register it as
    an MLflow model version. Bad input: ConfigError naming the flag (--out, --format, --lora-only)."""
    from multistep.atomic import check_output_folder, staged_folder
    from multistep.nets.lora import has_lora, merged
    from multistep.train.checkpoint import open_checkpoint
    from multistep.train.student import load_student

    p = Path(state)
    opened = open_checkpoint(p)
    if opened.kind == "teacher":
        raise ConfigError(
            f"{p}: a teacher file from `multistep teacher`: export takes a student (a trial's state.pt); "
            "sample the teacher with `multistep sample`, or distil it with a sweep (teacher: {kind: checkpoint})"
        )
    out_dir = check_output_folder(out, "--out")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        raise ConfigError(f"--out {out}: not empty (an export is written into a new or empty folder)")
    tc, _, _, c, _, student = load_student(p, opened.blob)
    text_to_image, lora = teacher_kind(tc.teacher).latent(tc), has_lora(student.ema)
    ema = student.ema if lora_only or not lora else merged(student.ema)  # the teacher's architecture
    f = ema.float().eval().requires_grad_(False)
    spec = student_spec(tc, c, student, opened.blob, f)
    _check_format(fmt, p, spec, text_to_image, lora_only, lora)
    S, k = spec["student_steps"], spec["num_classes"]
    noise = torch.randn((8, *spec["shape"]), generator=torch.Generator().manual_seed(0))
    labels = torch.arange(8) % k if k else None
    want = platform_samples(f, c.schedule, S, noise, labels)
    with staged_folder(out) as folder:
        err = _rel(_write(fmt, folder, f, c, spec, noise, labels, text_to_image, lora_only), want)
        if not err <= TOLERANCE:
            raise RuntimeError(
                f"the reloaded {fmt} export's samples differ from the platform's by {err:.2e} (relative max)"
            )
    log.info(f"{fmt} export of {p} -> {out} (S = {S}; reloaded samples differ from the platform's by {err:.1e})")
    if register_as:
        from multistep.sweep.preflight import tracking_uri as resolved_uri
        from multistep.tracking.registry import register

        version = register(resolved_uri(tracking_uri), register_as, out, fmt, spec)
        log.info(f"registered as model {register_as!r} version {version}")
    return 0


def _ddim_scheduler(f):
    """diffusers' DDIM on the teacher's discrete schedule with trailing timesteps and alpha 1 at the end: its S
    steps visit the student's grid t_k = k / S (DiscreteVP), so it is MCM's Algorithm 2 (deterministic DDIM)."""
    from diffusers import DDIMScheduler

    t = f.time
    abar = torch.sigmoid(t.logsnr_k)  # abar_k from lambda_k
    betas = 1 - abar / torch.cat([torch.ones(1, dtype=abar.dtype), abar[:-1]])
    pred = {"eps": "epsilon", "v": "v_prediction", "x0": "sample"}[f.parameterization]
    return DDIMScheduler(
        num_train_timesteps=len(betas),
        trained_betas=betas.tolist(),
        prediction_type=pred,
        clip_sample=bool(f.clip_sample),
        clip_sample_range=float(f.clip_sample or 1.0),
        timestep_spacing="trailing",
        set_alpha_to_one=True,
    )


def _diffusers_export(f, c, S, out: Path, noise, labels) -> torch.Tensor:
    """unet/ + scheduler/ of a DDIMPipeline; returns diffusers' own S-step DDIM samples of the reloaded folder."""
    import copy

    from diffusers import DDIMPipeline, DDIMScheduler, UNet2DModel

    DDIMPipeline(unet=copy.deepcopy(f.net.unet), scheduler=_ddim_scheduler(f)).save_pretrained(str(out))
    unet = UNet2DModel.from_pretrained(str(out / "unet"), local_files_only=True, low_cpu_mem_usage=False).eval()
    d = DDIMScheduler.from_pretrained(str(out / "scheduler"), local_files_only=True)
    d.set_timesteps(S)
    y = None if labels is None else f.labels(labels, len(labels), labels.device)
    x = noise.clone()
    with torch.no_grad():
        for ts in d.timesteps:
            x = d.step(unet(x, ts, class_labels=y).sample, ts, x, eta=0.0).prev_sample
    return x


def _pipeline_export(f, teacher_path: str, S: int, out: Path, noise, prompts: list[str], lora_only: bool):
    """A StableDiffusionPipeline folder: the student's UNet with the teacher's VAE, text encoder and tokenizer and
    the trailing-DDIM scheduler (or, lora_only, the adapters as save_lora_weights writes them, and the scheduler);
    returns the reloaded pipeline's own S-step latents for the prompts, unguided, from `noise`."""
    import copy

    from diffusers import DDIMScheduler, StableDiffusionPipeline

    def pipeline(path):
        return StableDiffusionPipeline.from_pretrained(
            str(path), local_files_only=True, safety_checker=None, requires_safety_checker=False
        )

    unet = copy.deepcopy(f.net.unet)
    if lora_only:
        from multistep.nets.lora import adapter_weights, lora_config

        StableDiffusionPipeline.save_lora_weights(
            str(out), unet_lora_layers=adapter_weights(unet), unet_lora_adapter_metadata=lora_config(f)
        )
        _ddim_scheduler(f).save_pretrained(str(out / "scheduler"))
        pipe = pipeline(teacher_path)
        pipe.load_lora_weights(str(out))
        pipe.scheduler = DDIMScheduler.from_pretrained(str(out / "scheduler"), local_files_only=True)
    else:
        pipe = pipeline(teacher_path)
        pipe.unet, pipe.scheduler = unet, _ddim_scheduler(f)
        pipe.save_pretrained(str(out))
        pipe = pipeline(out)
    pipe.set_progress_bar_config(disable=True)
    size = noise.shape[-1] * pipe.vae_scale_factor
    with torch.no_grad():
        return pipe(
            prompts,
            height=size,
            width=size,
            num_inference_steps=S,
            guidance_scale=1.0,
            latents=noise.float(),
            output_type="latent",
        ).images


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("multistep")
    except PackageNotFoundError:
        return "unknown"
