"""Text alignment of caption-conditioned samples with a local CLIP model (`eval.clip_path`): CLIPScore.

    clip_score = 100 max(cos(E_image(x), E_text(caption)), 0)

per sample, averaged over the evaluation's prompts (torchmetrics' CLIPScore convention; Hessel et al. 2021 without
their 2.5 rescaling), logged as `clip_score_<n>` with its standard error. The model is a transformers CLIPModel
folder (`save_pretrained`), loaded offline; images in [-1, 1] (a latent teacher's samples decoded by its VAE first)
are resized to the model's image size (bicubic, antialiased) and normalised with its image processor's mean and
std (preprocessor_config.json; CLIP's own values when it has none). Each caption's text embedding is computed once.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP's image normalisation
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _embedding(out) -> torch.Tensor:
    """get_*_features' projected embedding: a tensor (transformers 4) or its output's pooler_output (5)."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


class ClipScore:
    def __init__(self, path: str | Path, device: str = "cpu"):
        import transformers

        transformers.utils.logging.disable_progress_bar()
        p = Path(path)
        try:
            self.model = transformers.CLIPModel.from_pretrained(str(p), local_files_only=True).eval().to(device)
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(str(p), local_files_only=True)
        except (OSError, ValueError) as e:
            raise ValueError(
                f"eval.clip_path: {p}: not a CLIPModel folder ({' '.join(str(e).split())[:200]})"
            ) from None
        pre = p / "preprocessor_config.json"
        cfg = json.loads(pre.read_text()) if pre.is_file() else {}
        self.mean = torch.tensor(cfg.get("image_mean", CLIP_MEAN), device=device).reshape(1, -1, 1, 1)
        self.std = torch.tensor(cfg.get("image_std", CLIP_STD), device=device).reshape(1, -1, 1, 1)
        self.size, self.device, self._text = int(self.model.config.vision_config.image_size), device, {}

    @torch.no_grad()
    def text(self, captions: list[str]) -> torch.Tensor:
        """Unit text embeddings of the captions (each computed once)."""
        todo = [c for c in dict.fromkeys(captions) if c not in self._text]
        if todo:
            t = self.tokenizer(todo, padding=True, truncation=True, return_tensors="pt").to(self.device)
            e = F.normalize(_embedding(self.model.get_text_features(**t)), dim=-1)
            self._text |= dict(zip(todo, e))
        return torch.stack([self._text[c] for c in captions])

    @torch.no_grad()
    def image(self, images: torch.Tensor) -> torch.Tensor:
        """Unit image embeddings of images in [-1, 1] (N, C, H, W); one channel is repeated to three."""
        x = images.float().to(self.device)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = F.interpolate((x + 1) / 2, size=(self.size, self.size), mode="bicubic", antialias=True, align_corners=False)
        out = self.model.get_image_features(pixel_values=(x - self.mean) / self.std)
        return F.normalize(_embedding(out), dim=-1)

    def __call__(self, images: torch.Tensor, captions: list[str]) -> np.ndarray:
        """Per sample: 100 max(cos, 0) of the image and its caption."""
        cos = (self.image(images) * self.text(captions)).sum(-1)
        return (100 * cos.clamp_min(0)).double().cpu().numpy()


class Alignment:
    """(samples, caption ids) -> per-row CLIP score: ids index the data's vocabulary, id K the empty prompt; samples
    are decoded first where the teacher works in latents."""

    def __init__(self, clip: ClipScore, captions: list[str], decode=None):
        self.clip, self.captions, self.decode = clip, list(captions) + [""], decode

    def __call__(self, samples, labels: torch.Tensor) -> np.ndarray:
        x = torch.as_tensor(samples)
        images = self.decode(x) if self.decode is not None else x
        return self.clip(images, [self.captions[i] for i in labels.tolist()])
