"""Teachers trained elsewhere (docs/teachers.md): a diffusers folder, a TorchScript / torch.export file, or a state
dict loaded into the user's own network. Nothing is ever downloaded (diffusers with local_files_only).

`load(cfg)` returns the network as the platform's denoiser (nets/adapter.py) on the platform's schedule: a clipped
cosine whose lowest log-SNR is the teacher's (DDPM's abar_T, EDM's sigma_max), so the student never asks the
teacher about a noise level it was not trained on. Every failure is a ValueError naming the teacher field.
"""

from __future__ import annotations

import importlib
import io
import json
from pathlib import Path

import torch
from torch import nn

from multistep.config.errors import first_line
from multistep.diffusion.ddim import bcast as _bc
from multistep.diffusion.schedules import ClippedCosine, Schedule, make_schedule
from multistep.nets.adapter import Adapted, Time, ddpm_betas

PREDICTION_TYPES = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}  # diffusers -> parameterization
LOGSNR_MAX = 20.0  # highest log-SNR of the student's schedule (above the teacher's range the adapter clamps)


class DiffusersUNet(nn.Module):
    """A diffusers UNet2DModel as net(x, timestep[, class_labels]) -> tensor."""

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet

    def forward(self, x, t, y=None):
        return self.unet(x, t, class_labels=y).sample


class Scripted(nn.Module):
    """A TorchScript module that can be deep-copied like any network (the EMA, targets, the student copy): a copy is
    a save/load round trip, whose parameters are leaves (a deepcopy of a ScriptModule's trainable ones are not)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, *args):
        return self.module(*args)

    def __deepcopy__(self, memo):
        buf = io.BytesIO()
        torch.jit.save(self.module, buf)
        buf.seek(0)
        device = next(self.module.parameters(), torch.empty(0)).device
        twin = Scripted(torch.jit.load(buf, map_location=device)).train(self.training)
        for a, b in zip(self.parameters(), twin.parameters()):
            b.requires_grad_(a.requires_grad)
        return twin


class Exported(nn.Module):
    """The module of a torch.export program: it refuses train()/eval() (its graph is fixed), so they stop here."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, *args):
        return self.module(*args)

    def train(self, mode: bool = True):
        self.training = mode
        return self


def _read_json(p: Path, field: str) -> dict:
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{field}: {p}: not a readable JSON file ({e})") from None


def diffusers_folder(path: str) -> tuple[Path, dict | None]:
    """(UNet folder, scheduler config or None) of a pipeline folder (model_index.json + unet/ + scheduler/) or of a
    bare model folder (config.json, optionally with scheduler_config.json beside it)."""
    root = Path(path)
    if (root / "model_index.json").is_file():
        unet, sched = root / "unet", root / "scheduler" / "scheduler_config.json"
        if not (unet / "config.json").is_file():
            raise ValueError(f"teacher.path: {root}: a pipeline folder without unet/config.json")
    elif (root / "config.json").is_file():
        unet, sched = root, root / "scheduler_config.json"
    else:
        raise ValueError(
            f"teacher.path: {root}: neither a diffusers pipeline (model_index.json) nor a model folder (config.json)"
        )
    cls = _read_json(unet / "config.json", "teacher.path").get("_class_name")
    pipeline = (root / "model_index.json").is_file()
    if cls != "UNet2DModel" and not (pipeline and cls == "UNet2DConditionModel"):
        raise ValueError(
            f"teacher.path: {unet}: a {cls}, not a UNet2DModel (or a UNet2DConditionModel in a text-to-image "
            "pipeline folder): not a diffusers network this platform distils"
        )
    return unet, (_read_json(sched, "teacher.path") if sched.is_file() else None)


def declaration(t, complete=None) -> dict:
    """The teacher's effective declaration: the YAML's fields, completed by `complete(t, declared)` (a diffusers
    folder: its scheduler config); an eps/v/x0 network without a discrete schedule is an error."""
    d = {
        "parameterization": t.parameterization,
        "ddpm": t.ddpm.model_dump() if t.ddpm else None,
        "clip_sample": t.clip_sample,
        "num_classes": t.num_classes,
    }
    return complete(t, d) if complete else d


def diffusers_declaration(t, d: dict) -> dict:
    """A diffusers folder's declaration: what the YAML leaves out, from its scheduler and UNet configs."""
    unet, sc = diffusers_folder(t.path)
    if sc is not None:
        pt = sc.get("prediction_type", "epsilon")
        if pt not in PREDICTION_TYPES:
            raise ValueError(
                f"teacher.path: {t.path}: unsupported prediction_type {pt!r} in its scheduler config "
                f"(epsilon, v_prediction, sample)"
            )
        ddpm = {
            "beta_schedule": sc.get("beta_schedule", "linear"),
            "beta_start": sc.get("beta_start", 1e-4),
            "beta_end": sc.get("beta_end", 0.02),
            "num_train_timesteps": sc.get("num_train_timesteps", 1000),
            "betas": sc.get("trained_betas"),
        }
        d |= {"parameterization": d["parameterization"] or PREDICTION_TYPES[pt], "ddpm": d["ddpm"] or ddpm}
        if d["clip_sample"] is None and sc.get("clip_sample"):
            d["clip_sample"] = float(sc.get("clip_sample_range", 1.0))
    if d["parameterization"] is None or (d["parameterization"] in ("eps", "v", "x0") and d["ddpm"] is None):
        raise ValueError(
            f"teacher.path: {t.path} has no scheduler config (scheduler/scheduler_config.json): give "
            "teacher.parameterization and teacher.ddpm in the YAML"
        )
    if d["num_classes"] is None:
        d["num_classes"] = _read_json(unet / "config.json", "teacher.path").get("num_class_embeds")
    return d


def diffusers_network(t) -> nn.Module:
    """The UNet2DModel of a diffusers folder (pipeline or bare model)."""
    from diffusers import UNet2DModel

    unet, _ = diffusers_folder(t.path)
    try:
        return DiffusersUNet(UNet2DModel.from_pretrained(str(unet), local_files_only=True, low_cpu_mem_usage=False))
    except Exception as e:  # diffusers raises many kinds for a broken folder
        raise ValueError(f"teacher.path: {unet}: diffusers could not load it ({first_line(e, 200)})") from None


def scripted_network(t) -> nn.Module:
    """A TorchScript (torch.jit.save) or torch.export (.pt2) file."""
    p = Path(t.path)
    try:
        if p.suffix == ".pt2":
            return Exported(torch.export.load(str(p)).module())
        return Scripted(torch.jit.load(str(p), map_location="cpu"))
    except Exception as e:
        raise ValueError(
            f"teacher.path: {p}: not a TorchScript (torch.jit.save) or torch.export file ({first_line(e, 200)})"
        ) from None


def built_network(t) -> nn.Module:
    """The user's builder(**builder_args) with the state dict (torch or safetensors file) loaded into it."""
    mod, _, fn = t.builder.partition(":")
    try:
        build = getattr(importlib.import_module(mod), fn)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"teacher.builder: {t.builder}: not importable ({first_line(e, 200)})") from None
    try:
        net = build(**t.builder_args)
    except Exception as e:  # the user's code
        raise ValueError(
            f"teacher.builder_args: {t.builder}(**{t.builder_args}) failed ({first_line(e, 200)})"
        ) from None
    p = Path(t.path)
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(p))
        else:
            sd = torch.load(str(p), map_location="cpu", weights_only=True)
            sd = sd.get("state_dict", sd) if isinstance(sd, dict) else sd
    except Exception as e:
        raise ValueError(f"teacher.path: {p}: not a readable state dict ({first_line(e, 200)})") from None
    try:
        net.load_state_dict(sd)
    except Exception as e:
        raise ValueError(f"teacher.path: {p}: does not fit {t.builder} ({first_line(e, 200)})") from None
    return net


def time_of(t, decl: dict) -> Time:
    p = decl["parameterization"]
    if p == "edm":
        e = t.edm
        return Time.of("edm", sigma_min=e.sigma_min, sigma_max=e.sigma_max)
    if p == "flow":
        return Time.of("flow", time_scale=t.time_scale)
    if decl["ddpm"] is not None:
        g = decl["ddpm"]
        betas = g.get("betas")
        betas = (
            torch.tensor(betas, dtype=torch.float64)
            if betas
            else ddpm_betas(g["beta_schedule"], g["beta_start"], g["beta_end"], g["num_train_timesteps"])
        )
        return Time.ddpm(betas)
    return Time.of("vp", schedule=make_schedule(t.schedule.name, **t.schedule.params), time_scale=t.time_scale)


def student_schedule(t, time: Time) -> Schedule:
    """The platform's schedule for this teacher. A DDPM teacher: its own discrete schedule in continuous time
    (DiscreteVP: N-step DDIM visits the timesteps diffusers' "trailing" DDIM visits). Others, or with
    teacher.logsnr_min: cosine clipped to [the teacher's lowest log-SNR (or logsnr_min), LOGSNR_MAX]. Asking for
    less than the teacher covers is an error."""
    lo, _ = time.logsnr_range()
    if t.logsnr_min is not None and t.logsnr_min < lo - 1e-9:
        raise ValueError(
            f"teacher.logsnr_min: {t.logsnr_min:g} is below the lowest log-SNR the teacher covers ({lo:.4f})"
        )
    if t.logsnr_min is None and (own := time.own_schedule()) is not None:
        return own
    return ClippedCosine(logsnr_min=t.logsnr_min if t.logsnr_min is not None else lo, logsnr_max=LOGSNR_MAX)


def load(t, network, complete=None) -> tuple[Adapted, dict]:
    """(the teacher as a denoiser on its student schedule, its effective declaration): `network(t)` the bare network
    (diffusers_network, scripted_network, built_network), `complete` as for `declaration`."""
    decl = declaration(t, complete)
    time = time_of(t, decl)
    sched = student_schedule(t, time)
    net = network(t).float().eval()  # on the CPU
    f = Adapted(
        net, sched, time, decl["parameterization"], decl["num_classes"], t.null_label, decl["clip_sample"] or 0.0
    )
    return f.requires_grad_(False), decl


@torch.no_grad()
def plausibility_error(f: Adapted, x: torch.Tensor, y: torch.Tensor | None = None) -> str | None:
    """Why the declared parameterisation looks wrong on data rows x (None when it looks right):
    at the lowest noise x_hat must be close to z / alpha; at the highest, near the data mean; and finite."""
    g = torch.Generator().manual_seed(0)
    x = x.double()
    eps = torch.randn(x.shape, generator=g, dtype=torch.float64)
    spread = (x - x.mean(0)).pow(2).mean().sqrt().clamp_min(1e-3)
    out = {}
    for name, t in (("lowest", 0.0), ("mid", 0.5), ("highest", 1.0)):
        tt = torch.full((len(x),), t, dtype=torch.float64)
        a, s = f.schedule.alpha_sigma(tt)
        z = _bc(a, x) * x + _bc(s, x) * eps
        x_hat = f(z, tt, y).double()
        if not torch.isfinite(x_hat).all():
            return f"the teacher returns non-finite values at the {name} noise level"
        out[name] = (z, a, x_hat)
    z, a, x_hat = out["lowest"]
    low = (x_hat - z / _bc(a, x)).pow(2).mean().sqrt() / spread
    high = (out["highest"][2] - x.mean(0)).pow(2).mean().sqrt() / spread
    if low > 0.5 or high > 1.5:
        return (
            f"its output does not look like {f.parameterization} (x_hat at the lowest noise is {low:.2f} data spreads "
            f"from z / alpha, at the highest {high:.2f} from the data mean; a right declaration gives < 0.5 and < 1.5): "
            "check teacher.parameterization and its schedule (teacher.ddpm / teacher.edm)"
        )
    return None
