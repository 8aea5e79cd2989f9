"""Text-to-image teachers in the Stable Diffusion format: a diffusers pipeline folder (model_index.json with `unet`
UNet2DConditionModel, `vae` AutoencoderKL, `text_encoder`, `tokenizer`, `scheduler`), distilled in the VAE's latent
space on caption data.

`teacher: {kind: diffusers, path: DIR}` recognises such a folder by its model_index.json and its UNet's class
(teachers/imported.py asks `is_pipeline`); everything else about the kind (prediction type and discrete schedule
from the scheduler config, null_label, the plausibility check) is as for unconditional diffusers teachers.

- **Latents.** The data are the VAE's latents of the caption set's images, `scaling_factor x` the mean of the
  encoder's distribution (deterministic: the same latents in every trial), computed once and cached by the VAE's
  files and the data's identity (`latent_data`); training never runs the encoder again.
- **Captions.** The frozen text encoder (any transformers class its folder declares) and tokenizer run once per
  distinct caption of the data (nets/text.py: token states padded to the tokenizer's model_max_length, cached by
  content hash); the UNet looks its `encoder_hidden_states` up by caption id. Id K (the number of captions) is the
  empty prompt: the null condition of text classifier-free guidance (`method.guidance`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

CONDITIONAL_UNET = "UNet2DConditionModel"


def is_pipeline(path: str | Path) -> bool:
    """A Stable-Diffusion-format folder: model_index.json and a UNet2DConditionModel in unet/."""
    root = Path(path)
    cfg = root / "unet" / "config.json"
    if not (root / "model_index.json").is_file() or not cfg.is_file():
        return False
    try:
        return json.loads(cfg.read_text()).get("_class_name") == CONDITIONAL_UNET
    except (OSError, ValueError):
        return False


class CaptionUNet(nn.Module):
    """A UNet2DConditionModel as net(x, timestep, y): y caption ids into a frozen (K + 1, L, D) table of token
    states (row K: the empty prompt), passed as encoder_hidden_states."""

    def __init__(self, unet: nn.Module, table: torch.Tensor):
        super().__init__()
        self.unet = unet
        self.register_buffer("table", table.float())

    def forward(self, x, t, y=None):
        if y is None:
            y = torch.full((x.shape[0],), len(self.table) - 1, dtype=torch.long, device=x.device)
        return self.unet(x, t, encoder_hidden_states=self.table[y].to(x.dtype)).sample


def load_unet(root: Path, table: torch.Tensor) -> CaptionUNet:
    from diffusers import UNet2DConditionModel

    from multistep.config.errors import first_line

    try:
        unet = UNet2DConditionModel.from_pretrained(str(root / "unet"), local_files_only=True, low_cpu_mem_usage=False)
    except Exception as e:  # diffusers raises many kinds for a broken folder
        raise ValueError(f"teacher.path: {root / 'unet'}: diffusers could not load it ({first_line(e, 200)})") from None
    return CaptionUNet(unet, table)


def caption_states(root: Path, vocabulary: list[str], cache_dir: Path | None) -> torch.Tensor:
    """The (K + 1, L, D) token states of the vocabulary and the empty prompt, by the folder's text encoder."""
    from multistep.nets.text import cached_caption_table

    for sub in ("text_encoder", "tokenizer"):
        if not (root / sub).is_dir():
            raise ValueError(f"teacher.path: {root}: a text-to-image pipeline without {sub}/")
    return cached_caption_table(str(root / "text_encoder"), vocabulary, "tokens", cache_dir, str(root / "tokenizer"))


def load_vae(root: Path):
    from diffusers import AutoencoderKL

    from multistep.config.errors import first_line

    try:
        vae = AutoencoderKL.from_pretrained(str(root / "vae"), local_files_only=True, low_cpu_mem_usage=False)
    except Exception as e:
        raise ValueError(
            f"teacher.path: {root / 'vae'}: diffusers could not load the VAE ({first_line(e, 200)})"
        ) from None
    return vae.float().eval().requires_grad_(False)


@torch.no_grad()
def encode_images(vae, x: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """scaling_factor x the mean of the VAE encoder's distribution of images x in [-1, 1] (float32)."""
    s = float(vae.config.scaling_factor)
    return torch.cat(
        [vae.encode(x[i : i + batch_size].float()).latent_dist.mean * s for i in range(0, len(x), batch_size)]
    )


@torch.no_grad()
def decode_latents(vae, z: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Images in [-1, 1] (float32) of latents z (the inverse scaling of encode_images, then the VAE decoder)."""
    s = float(vae.config.scaling_factor)
    return torch.cat(
        [vae.decode(z[i : i + batch_size].float() / s).sample.clamp(-1, 1) for i in range(0, len(z), batch_size)]
    )


def latent_data(root: Path, images, cache_dir: Path | None, data_identity: dict):
    """images (data/kinds.ImageData of caption data) as an ImageData of their latents (same labels, captions and
    classes), the latents cached in cache_dir by the VAE's files and the data's identity."""
    from multistep.data.kinds import ImageData, as_float
    from multistep.metrics.extractors import tree_sha256
    from multistep.train.checkpoint import cached, content_hash

    compute = lambda: encode_images(load_vae(root), as_float(images.x))
    if cache_dir is None:
        z = compute()
    else:
        key = content_hash({"vae": tree_sha256(root / "vae", 64), "data": data_identity})
        z = cached(Path(cache_dir) / f"latents-{key}.pt", compute)
    return ImageData(z, images.labels, images.captions, images.classes)


# -- the diffusers kind's text-to-image branch (teachers/imported.py) -------------------------------------------
def vocabulary(cfg, where: str = "") -> list[str]:
    """The caption data's vocabulary; other data is a one-line ConfigError."""
    from multistep.config import ConfigError
    from multistep.data import data_kind

    kind = data_kind(cfg.data)
    try:
        words = kind.captions(cfg.data) if kind.captions else None
    except ValueError as e:
        raise ConfigError(f"{where}data.path: {e}") from None
    if not words:
        raise ConfigError(
            f"{where}teacher.path: {cfg.teacher.path} is a text-to-image pipeline; it needs caption data "
            f"(data: {{kind: parquet, path: ...}} with a caption column), not {cfg.data.label}"
        )
    return words


def _copies(cfg, where: str = "") -> None:
    """The student of a text-to-image teacher is its copy (or the copy's LoRA), never the platform MLP."""
    from multistep.config import ConfigError

    if not cfg.student.copy_teacher:
        raise ConfigError(f"{where}student.copy_teacher: a text-to-image teacher's student starts as its copy (true)")


def open_teacher(cfg, words: list[str], cache_dir: Path | None):
    """The pipeline's UNet as a denoiser on its student schedule (nets/imported.py), conditioned on caption ids."""
    from multistep.nets import imported
    from multistep.nets.adapter import Adapted

    t, root = cfg.teacher, Path(cfg.teacher.path)
    decl = imported.declaration(t, imported.diffusers_declaration)
    time = imported.time_of(t, decl)
    net = load_unet(root, caption_states(root, words, cache_dir)).float().eval()
    k = len(words)  # the platform's null class K is the table's empty-prompt row
    f = Adapted(
        net, imported.student_schedule(t, time), time, decl["parameterization"], k, k, decl["clip_sample"] or 0.0
    )
    return f.requires_grad_(False)


def build(cfg, load_data: bool = True, check: bool = True):
    """Components of a trial with a text-to-image teacher: the data as latents (always in memory: the encoder ran
    once), the caption-conditioned UNet, and the student as its copy."""
    import copy

    from multistep.config import ConfigError
    from multistep.config.errors import first_line
    from multistep.data import data_kind
    from multistep.nets import imported
    from multistep.train.build import DEFAULT_CACHE, Components, make_data, plausibility_rows

    words = vocabulary(cfg)
    _copies(cfg)
    try:
        teacher = open_teacher(cfg, words, DEFAULT_CACHE)
        images = make_data(cfg.data)
        data = latent_data(Path(cfg.teacher.path), images, DEFAULT_CACHE, data_kind(cfg.data).identity(cfg.data))
    except ValueError as e:
        raise ConfigError(first_line(e, 300)) from None
    if check and cfg.teacher.check and (err := imported.plausibility_error(teacher, *plausibility_rows(data))):
        raise ConfigError(f"teacher.parameterization: {cfg.teacher.path}: {err}")
    student = copy.deepcopy(teacher).requires_grad_(True).train()
    return Components(teacher.schedule, data, teacher, student)


def preflight(cfg, shape: tuple, where: str) -> None:
    """Caption data, the pipeline's parts, and a latent of this data's image size that the UNet takes: one forward
    pass on zeros with the empty prompt, finite, of the latent's shape."""
    from multistep.config import ConfigError
    from multistep.config.errors import first_line

    vocabulary(cfg, where)
    _copies(cfg, where)
    root = Path(cfg.teacher.path)
    at = f"{where}teacher.path: {root}"
    try:
        latent = latent_shape(root, shape)
        f = open_teacher(cfg, [], None)  # the null prompt alone: no captions encoded before anything starts
        with torch.no_grad():
            out = f(torch.zeros(1, *latent, dtype=torch.float64), torch.full((1,), 0.5, dtype=torch.float64))
    except ValueError as e:
        raise ConfigError(f"{where}{first_line(e, 300)}") from None
    except Exception as e:  # a shape mismatch inside diffusers shows as any of several errors
        raise ConfigError(f"{at}: its UNet does not take latents of images {tuple(shape)} ({first_line(e)})") from None
    if not torch.isfinite(out).all() or tuple(out.shape[1:]) != latent:
        raise ConfigError(f"{at}: its UNet returns non-finite values or another shape on latents {latent}")


def latent_shape(root: Path, image_shape: tuple) -> tuple[int, int, int]:
    """The VAE's latent shape of images of image_shape (C, H, W), from its config (no weights loaded)."""
    cfg_file = root / "vae" / "config.json"
    if not cfg_file.is_file():
        raise ValueError(f"teacher.path: {root}: a text-to-image pipeline without vae/config.json")
    v = json.loads(cfg_file.read_text())
    down = 2 ** (len(v.get("block_out_channels", [0])) - 1)
    c, h, w = image_shape
    if c != v.get("in_channels", 3) or h % down or w % down:
        raise ValueError(
            f"teacher.path: {root}: its VAE takes {v.get('in_channels', 3)}-channel images with sides divisible by "
            f"{down}; the data's images are {tuple(image_shape)}"
        )
    return (int(v.get("latent_channels", 4)), h // down, w // down)
