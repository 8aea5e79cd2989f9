"""`multistep sample SOURCE --steps N --out OUT.npy`: samples of a teacher or a distilled student, in-process.

SOURCE is a teacher YAML (a `teacher:` section, and `data:` where the shape is needed), a diffusers folder, a
`teacher.pt` of `multistep teacher`, or a trial's `state.pt`. The starting noise eps (unit variance, one row per
sample) is taken at the teacher's highest noise level (t = 1 of the platform schedule); the samples are float32 in
the teacher's own sample space (the data space: x_hat), unclipped; the PNG grid clips to [-1, 1].
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from multistep.atomic import write_with
from multistep.config import ConfigError

log = logging.getLogger(__name__)

SAMPLERS = ("ddim", "addim", "mcm", "cm", "flowmap")  # teacher: ddim / addim; student: mcm (Algorithm 2) / cm (CM
# sampler); a flow-map student: flowmap (deterministic jumps on the uniform grid)


@dataclass
class Source:
    f: object  # the denoiser f(z, t[, y]) -> x_hat
    schedule: object
    shape: tuple[int, ...]
    kind: str  # "teacher" or "student"
    steps: int | None  # a student's trained S (its default steps)
    num_classes: int | None
    scripted: object = None  # a TorchScript export's sampler: sample(noise[, labels]) at its own S
    captions: list[str] | None = None  # a caption-conditional source's vocabulary (label k: captions[k])
    decode: object = None  # a latent source's VAE decoder: latents -> images in [-1, 1]


def load_source(arg: str) -> Source:
    """A teacher or student from SOURCE; bad input is a ConfigError naming it."""
    from multistep.train.build import sample_shape, teacher_classes

    p = Path(arg)
    if not p.exists():
        raise ConfigError(f"SOURCE {arg}: no such file or folder")
    if (p / "multistep.json").is_file():  # a `multistep export` folder
        return _exported(p)
    if p.is_dir() or p.suffix in (".yaml", ".yml"):
        from pydantic import ValidationError

        from multistep.config import TrialCfg, describe, read_yaml
        from multistep.teachers import teacher_kind
        from multistep.train.build import build

        doc = {"teacher": {"kind": "diffusers", "path": str(p)}} if p.is_dir() else read_yaml(p)
        if "teacher" not in doc:
            raise ConfigError(f"{arg}: no teacher: section")
        try:
            tc = TrialCfg.model_validate({k: doc[k] for k in ("teacher", "data") if k in doc})
        except ValidationError as e:
            raise ConfigError(f"{arg}: {describe(e)}") from None
        kind = teacher_kind(tc.teacher)
        c = build(tc, load_data=False)
        shape = sample_shape(tc.data, c.data) if "data" in doc or kind.exact else kind.known_shape(c.teacher)
        if shape is None:
            raise ConfigError(f"{arg}: give a data: section (the sample shape of this teacher)")
        return Source(c.teacher, c.schedule, shape, "teacher", None, teacher_classes(c.teacher))
    from multistep.train.checkpoint import open_checkpoint

    opened = open_checkpoint(p)
    if opened.kind == "trial":  # the student's EMA weights
        from multistep.train.student import load_student

        blob = opened.blob
        tc, _, _, c, _, state = load_student(p, blob)
        shape = tuple(c.data.shape) if c.data is not None else tuple(blob.get("shape", ()))
        src = Source(state.ema, c.schedule, shape, "student", tc.method.student_steps, teacher_classes(c.teacher))
        return _conditioned_on_text(src, tc)
    from multistep.diffusion.schedules import make_schedule
    from multistep.nets.mlp import VDenoiser
    from multistep.train.teacher import load_teacher

    try:
        net, info = load_teacher(p)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    meta = info["meta"]
    sc = meta.get("schedule") or {"name": "cosine"}
    sched = make_schedule(sc["name"], **sc.get("params", {}))
    if meta.get("shape") is None:
        raise ConfigError(f"{arg}: the checkpoint records no sample shape (meta.shape)")
    return Source(
        VDenoiser(net, sched), sched, tuple(meta["shape"]), "teacher", None, getattr(net, "num_classes", None)
    )


def _conditioned_on_text(src: Source, tc) -> Source:
    """A student of caption data knows its captions (--prompts); of a latent teacher, its VAE decoder."""
    from multistep.data import data_kind
    from multistep.teachers import teacher_kind

    kind, root = data_kind(tc.data), teacher_kind(tc.teacher).latent(tc)
    src.captions = kind.captions(tc.data) if kind.captions else None
    if root:
        from multistep.metrics.extractors import DecodedExtractor

        src.decode = DecodedExtractor(root).decode
    return src


def _exported(p: Path) -> Source:
    import json

    from multistep import export

    spec = json.loads((p / export.SPEC).read_text())
    S, shape, k = spec["student_steps"], tuple(spec["shape"]), spec["num_classes"]
    if (p / "sampler.pt").is_file():
        import torch

        return Source(None, None, shape, "student", S, k, scripted=torch.jit.load(str(p / "sampler.pt")))
    if (p / "model.safetensors").is_file():
        f, _ = export.load(p)
        return Source(f, f.schedule, shape, "student", S, k)
    from multistep.config import TeacherCfg
    from multistep.teachers import teacher_kind

    t = TeacherCfg(
        kind="diffusers", path=str(p), num_classes=k, null_label=spec["denoiser"].get("null_label"), check=False
    )
    f, _ = teacher_kind(t).open(t)
    return Source(f, f.schedule, shape, "student", S, k)  # its S-step DDIM is MCM Algorithm 2


def _array(path: str, flag: str, dtype) -> np.ndarray:
    try:
        a = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ConfigError(f"{flag} {path}: not a readable .npy file ({e})") from None
    if not np.issubdtype(a.dtype, dtype):
        raise ConfigError(f"{flag} {path}: expected {np.dtype(dtype).name} values, got {a.dtype}")
    return a


def _sampler_name(src: Source, asked: str | None) -> str:
    """The sampler: the one asked for, else ddim (teachers), flowmap (flow-map students) or mcm; a wrong pairing is
    one line."""
    flow_map = bool(getattr(src.f, "flow_map", False))
    sampler = asked or ("ddim" if src.kind == "teacher" else "flowmap" if flow_map else "mcm")
    if src.kind == "teacher" and sampler in ("mcm", "cm", "flowmap"):
        raise ConfigError(f"--sampler {sampler}: a student's sampler; a teacher samples with ddim or addim")
    if (sampler == "flowmap") != flow_map:
        raise ConfigError(
            f"--sampler {sampler}: a flow-map student samples with flowmap (its jumps need their target time)"
            if flow_map
            else f"--sampler {sampler}: for flow-map students (method flowmap) only"
        )
    return sampler


def _noise_and_labels(args, src: Source):
    """(float64 noise rows, int labels or None) from --noise / --labels, or drawn with --seed."""
    import torch

    if args.noise:
        noise = torch.from_numpy(_array(args.noise, "--noise", np.floating).astype(np.float64))
        if tuple(noise.shape[1:]) != src.shape:
            raise ConfigError(
                f"--noise {args.noise}: rows of shape {tuple(noise.shape[1:])}, the source samples {src.shape}"
            )
    else:
        noise = torch.randn(
            (args.num, *src.shape), generator=torch.Generator().manual_seed(args.seed), dtype=torch.float64
        )
    if getattr(args, "prompts", None):
        if args.labels:
            raise ConfigError(f"--prompts {args.prompts}: give --prompts or --labels, not both")
        return noise, _prompt_labels(args.prompts, src, len(noise))
    if not args.labels:
        return noise, None
    labels = torch.from_numpy(_array(args.labels, "--labels", np.integer).astype(np.int64))
    if src.num_classes is None:
        raise ConfigError(f"--labels {args.labels}: the source is not class-conditional")
    if labels.shape != (len(noise),) or labels.min() < 0 or labels.max() > src.num_classes:
        raise ConfigError(f"--labels {args.labels}: need {len(noise)} labels in 0 .. {src.num_classes} (= no class)")
    return noise, labels


def _prompt_labels(path: str, src: Source, rows: int):
    """--prompts FILE: one caption of the source's data per line, cycled over the rows, as caption ids."""
    from multistep.metrics.evaluate import cycled
    from multistep.nets.text import prompt_ids

    if not src.captions:
        raise ConfigError(f"--prompts {path}: the source is not conditioned on captions")
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"--prompts {path}: file not found")
    try:
        return cycled(prompt_ids(file, src.captions, "--prompts ", "one of the source's captions"), rows)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _draw(f, src: Source, sampler: str, z, y, steps: int, seed: int):
    """One batch of samples of the source with the named sampler."""
    import torch

    from multistep.diffusion.samplers import cm_stochastic_sample, ddim_sample, flowmap_sample, mcm_sample
    from multistep.methods.base import conditioned, targeted

    g = conditioned(f, y)
    if src.scripted is not None:
        return f.sample(z, y)
    if sampler in ("ddim", "addim"):
        return ddim_sample(g, src.schedule, z, steps, xvar="analytic" if sampler == "addim" else None)[0]
    if sampler == "mcm":
        return mcm_sample(g, src.schedule, z, steps)[0]
    if sampler == "flowmap":
        return flowmap_sample(targeted(f, y), src.schedule, z, steps)[0]
    times = [k / steps for k in range(steps - 1, 0, -1)]  # after the first step at t = 1
    return cm_stochastic_sample(g, src.schedule, z, times, torch.Generator(z.device).manual_seed(seed))[0]


def run(args) -> int:
    import torch

    src = load_source(args.source)
    sampler = _sampler_name(src, args.sampler)
    steps = args.steps or src.steps
    if steps is None:
        raise ConfigError("--steps: required for a teacher (a student defaults to the S it was trained for)")
    noise, labels = _noise_and_labels(args, src)
    device = torch.device(args.device)
    if src.scripted is not None and steps != src.steps:
        raise ConfigError(f"--steps {steps}: a TorchScript export samples at its own S = {src.steps}")
    f = (src.f or src.scripted).to(device).eval()
    out = []
    for i in range(0, len(noise), args.batch_size):
        z = noise[i : i + args.batch_size].to(device)
        y = None if labels is None else labels[i : i + args.batch_size].to(device)
        out.append(_draw(f, src, sampler, z, y, steps, args.seed + i).float().cpu())
        log.info(f"sampled {min(i + args.batch_size, len(noise))}/{len(noise)}")
    x = torch.cat(out)
    if src.decode is not None and not args.latents:  # a latent student: the images its VAE decodes
        x = torch.cat([src.decode(x[i : i + args.batch_size]).cpu() for i in range(0, len(x), args.batch_size)])
    x = x.numpy()
    write_with(Path(args.out), lambda p: np.save(p, x))
    what = "latents" if src.decode is not None and args.latents else "decoded images" if src.decode else "samples"
    log.info(f"{len(x)} {what} ({sampler}, {steps} steps) -> {args.out}")
    if args.grid:
        from multistep.sweep.results import save_grid

        save_grid(torch.from_numpy(x), Path(args.grid))
        log.info(f"grid -> {args.grid}")
    return 0
