"""Frozen text encoders and caption tables: the conditioning of text-to-image teachers and students.

Captions condition a network through ids: a caption set's vocabulary (its sorted distinct captions) numbers them
0 .. K-1 and id K is the empty prompt "" (the null condition of classifier-free guidance, as the null class is for
class labels). The encoder runs once per caption of the vocabulary (never in the training loop) and its outputs
form a table the network looks rows up in:

- `pooled`: the masked mean of the last hidden states (sentence-transformers' mean pooling), one vector per
  caption: what our UNet adds to its time embedding (nets/unet.py, `text_dim`);
- `tokens`: the last hidden states padded to the tokenizer's model_max_length (77 for CLIP), as Stable Diffusion
  feeds `encoder_hidden_states` to its UNet's cross-attention.

The encoder loads offline from a local folder (`local_files_only`) by the class its config.json declares
(`architectures`, e.g. CLIPTextModel, BertModel), so any transformers text encoder works without code here.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

NULL_PROMPT = ""


class TextEncoder:
    """A frozen transformers text encoder and its tokenizer from local folders (float32, CPU unless moved)."""

    def __init__(self, path: str | Path, tokenizer_path: str | Path | None = None):
        import transformers

        transformers.utils.logging.disable_progress_bar()  # one small model, loaded in well under a second
        self.path = Path(path)
        cfg_file = self.path / "config.json"
        if not cfg_file.is_file():
            raise ValueError(f"{self.path}: not a transformers model folder (no config.json)")
        arch = (json.loads(cfg_file.read_text()).get("architectures") or ["AutoModel"])[0]
        cls = getattr(transformers, arch, None) or transformers.AutoModel
        try:
            self.model = cls.from_pretrained(str(self.path), local_files_only=True).eval().requires_grad_(False)
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(
                str(tokenizer_path or self.path), local_files_only=True
            )
        except (OSError, ValueError) as e:
            raise ValueError(f"{self.path}: cannot load the text encoder ({' '.join(str(e).split())[:200]})") from None
        self.dim = int(self.model.config.hidden_size)

    @torch.no_grad()
    def encode(self, captions: list[str], max_length: int | None = None, batch_size: int = 64, mask: bool = True):
        """(last hidden states (N, L, D) float32, attention mask (N, L)); padded to max_length when given; mask:
        pass the attention mask to the encoder (False: as Stable Diffusion pipelines call CLIP, unmasked)."""
        states, masks = [], []
        for i in range(0, len(captions), batch_size):
            pad = {"padding": "max_length", "max_length": max_length} if max_length else {"padding": "longest"}
            b = self.tokenizer(captions[i : i + batch_size], truncation=True, return_tensors="pt", **pad)
            out = self.model(input_ids=b["input_ids"], attention_mask=b["attention_mask"] if mask else None)
            states.append(out.last_hidden_state.float())
            masks.append(b["attention_mask"])
        width = max(s.shape[1] for s in states)
        states = [nn.functional.pad(s, (0, 0, 0, width - s.shape[1])) for s in states]
        masks = [nn.functional.pad(m, (0, width - m.shape[1])) for m in masks]
        return torch.cat(states), torch.cat(masks)

    def pooled(self, captions: list[str]) -> torch.Tensor:
        """One vector per caption: the mean of its token states over the attention mask (N, D)."""
        states, mask = self.encode(captions)
        m = mask.unsqueeze(-1).float()
        return (states * m).sum(1) / m.sum(1).clamp_min(1.0)

    def tokens(self, captions: list[str]) -> torch.Tensor:
        """Token states padded to the tokenizer's model_max_length, as Stable Diffusion pipelines encode prompts
        (StableDiffusionPipeline.encode_prompt: the attention mask only where the encoder's config asks for it)."""
        mask = bool(getattr(self.model.config, "use_attention_mask", False))
        return self.encode(captions, max_length=int(self.tokenizer.model_max_length), mask=mask)[0]


def caption_table(encoder: TextEncoder, vocabulary: list[str], how: str = "pooled") -> torch.Tensor:
    """The (K + 1, ...) table of a vocabulary's K captions and, in row K, the null prompt."""
    captions = list(vocabulary) + [NULL_PROMPT]
    return encoder.pooled(captions) if how == "pooled" else encoder.tokens(captions)


def prompt_ids(path: str | Path, vocabulary: list[str], where: str, of: str) -> torch.Tensor:
    """The caption ids of a prompts file (one caption of `vocabulary` per line, blank lines skipped); ValueError
    "<where><path>:<line>: '<text>' is not <of>" for another caption, "<where><path>: no prompts" for none."""
    index, ids = {w: i for i, w in enumerate(vocabulary)}, []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if text := line.strip():
            if text not in index:
                raise ValueError(f"{where}{path}:{n}: {text!r} is not {of}")
            ids.append(index[text])
    if not ids:
        raise ValueError(f"{where}{path}: no prompts")
    return torch.tensor(ids)


def cached_caption_table(
    encoder_path: str, vocabulary: list[str], how: str, cache_dir: Path | None, tokenizer_path: str | None = None
) -> torch.Tensor:
    """caption_table, kept in cache_dir by the content of the encoder folder(s), the vocabulary and `how`."""
    from multistep.metrics.extractors import tree_sha256
    from multistep.train.checkpoint import cached, content_hash

    compute = lambda: caption_table(TextEncoder(encoder_path, tokenizer_path), vocabulary, how)
    if cache_dir is None:
        return compute()
    key = content_hash(
        {
            "encoder": tree_sha256(encoder_path, 64),
            "tokenizer": tokenizer_path and tree_sha256(tokenizer_path, 64),
            "captions": vocabulary,
            "how": how,
            "format": 2,  # tokens: the attention mask as Stable Diffusion pipelines pass it
        }
    )
    return cached(Path(cache_dir) / f"captions-{key}.pt", compute)


class CaptionEmbedding(nn.Module):
    """nn.Embedding's interface over a frozen caption table: id -> Linear(table[id]) (the table is a buffer, in the
    state dict: a teacher checkpoint carries the captions it was trained on)."""

    def __init__(self, rows: int, text_dim: int, out_dim: int):
        super().__init__()
        self.register_buffer("table", torch.zeros(rows, text_dim))
        self.proj = nn.Linear(text_dim, out_dim)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.proj(self.table[y].to(self.proj.weight.dtype))
