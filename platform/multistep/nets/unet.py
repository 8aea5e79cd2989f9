"""A small, configurable UNet v-network for images (DDPM layout): v_theta(z_t, t[, y]).

ResNet blocks (GroupNorm, SiLU, 3x3 convs) each add a projection of the time embedding
(the MLP's features of t, sinusoid or octave, through a 2-layer MLP), optionally plus a class
embedding; self-attention at chosen resolutions; strided-conv down, nearest-neighbour up, skip
concatenation. Output convs are zero-initialised, so an untrained net predicts v = 0.
Class conditioning reserves id `num_classes` as the "null" class used for classifier-free guidance
dropout (and whenever y is None). Caption conditioning (text_dim) is the same with caption ids: the label
embedding is a frozen table of pooled text encodings through a trained projection (nets/text.py). Works down to a few thousand parameters on 8x8 inputs; all
reshapes are layout-agnostic, so the model runs under channels_last too.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from multistep.nets.mlp import check_time_features, features, jump_features, target_projection
from multistep.nets.text import CaptionEmbedding


def groups_for(ch: int) -> int:
    """GroupNorm groups: the largest divisor of ch that is <= min(32, ch // 4) (>= 4 channels per group)."""
    cap = max(1, min(32, ch // 4))
    return max(g for g in range(1, cap + 1) if ch % g == 0)


def norm(ch: int) -> nn.GroupNorm:
    return nn.GroupNorm(groups_for(ch), ch)


def zero(m: nn.Module) -> nn.Module:
    for p in m.parameters():
        nn.init.zeros_(p)
    return m


class ResBlock(nn.Module):
    """h = conv(SiLU(GN(x))) + Linear(SiLU(emb)); out = skip(x) + conv(dropout(SiLU(GN(h))))."""

    def __init__(self, cin: int, cout: int, emb_dim: int, dropout: float):
        super().__init__()
        self.norm1, self.conv1 = norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, cout)
        self.norm2, self.drop = norm(cout), nn.Dropout(dropout)
        self.conv2 = zero(nn.Conv2d(cout, cout, 3, padding=1))
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(F.silu(emb))[:, :, None, None]
        h = self.conv2(self.drop(F.silu(self.norm2(h))))
        return self.skip(x) + h


class Attention(nn.Module):
    """Residual multi-head self-attention over the H*W positions (heads of >= 32 channels when possible)."""

    def __init__(self, ch: int):
        super().__init__()
        self.heads = max(1, ch // 32) if ch % 32 == 0 else 1
        self.norm, self.qkv, self.proj = norm(ch), nn.Conv2d(ch, 3 * ch, 1), zero(nn.Conv2d(ch, ch, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        qkv = self.qkv(self.norm(x)).reshape(B, 3, self.heads, C // self.heads, H * W).transpose(-1, -2)
        h = F.scaled_dot_product_attention(qkv[:, 0], qkv[:, 1], qkv[:, 2])  # (B, heads, HW, C/heads)
        return x + self.proj(h.transpose(-1, -2).reshape(B, C, H, W))


class UNet(nn.Module):
    def __init__(
        self,
        in_ch: int = 1,  # image channels (output has the same)
        base_ch: int = 32,  # channels at full resolution
        ch_mult: Sequence[int] = (1, 2),  # channel multiplier per level; len - 1 downsamplings
        num_res_blocks: int = 1,  # ResBlocks per level on the way down (+1 on the way up)
        attn_resolutions: Sequence[
            int
        ] = (),  # spatial sizes with self-attention (the middle has it if the lowest is listed)
        resolution: int = 8,  # input height = width
        dropout: float = 0.0,  # dropout inside ResBlocks
        num_classes: int | None = None,  # class-conditional if set; id num_classes is the null class
        time_dim: int = 64,  # time features (even)
        time_features: str = "sinusoid",  # sinusoid: DDPM-style of 1000 t; octave: sin, cos of 2^k pi t
        target_input: bool = False,  # a flow-map student v(z, t, y, target) (nets/mlp.py target_projection)
        text_dim: int | None = None,  # caption-conditional: y are caption ids into a frozen table (nets/text.py)
    ):
        super().__init__()
        if resolution % 2 ** (len(ch_mult) - 1):
            raise ValueError(
                f"resolution {resolution} is not divisible by 2^{len(ch_mult) - 1} (ch_mult {tuple(ch_mult)})"
            )
        self.time_dim, self.time_features = time_dim, check_time_features(time_features)
        self.num_classes = num_classes
        emb_dim = 4 * base_ch
        self.time_mlp = nn.Sequential(nn.Linear(time_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.target_proj = target_projection(time_dim, emb_dim) if target_input else None
        if num_classes and text_dim:  # the num_classes captions' pooled encodings (+ the null prompt's), projected
            self.label_emb = CaptionEmbedding(num_classes + 1, text_dim, emb_dim)
        else:
            self.label_emb = nn.Embedding(num_classes + 1, emb_dim) if num_classes else None
        self.conv_in = nn.Conv2d(in_ch, base_ch, 3, padding=1)

        attn, res = set(attn_resolutions), resolution
        self.down, skips, ch = nn.ModuleList(), [base_ch], base_ch
        for i, m in enumerate(ch_mult):
            for _ in range(num_res_blocks):
                self.down.append(
                    nn.ModuleList(
                        [ResBlock(ch, base_ch * m, emb_dim, dropout)]
                        + ([Attention(base_ch * m)] if res in attn else [])
                    )
                )
                ch = base_ch * m
                skips.append(ch)
            if i < len(ch_mult) - 1:
                self.down.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                skips.append(ch)
                res //= 2
        self.mid = nn.ModuleList(
            [
                ResBlock(ch, ch, emb_dim, dropout),
                Attention(ch) if res in attn else nn.Identity(),
                ResBlock(ch, ch, emb_dim, dropout),
            ]
        )
        self.up = nn.ModuleList()
        for i, m in reversed(list(enumerate(ch_mult))):
            for _ in range(num_res_blocks + 1):
                self.up.append(
                    nn.ModuleList(
                        [ResBlock(ch + skips.pop(), base_ch * m, emb_dim, dropout)]
                        + ([Attention(base_ch * m)] if res in attn else [])
                    )
                )
                ch = base_ch * m
            if i > 0:
                self.up.append(
                    nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(ch, ch, 3, padding=1))
                )
                res *= 2
        self.out = nn.Sequential(norm(ch), nn.SiLU(), zero(nn.Conv2d(ch, in_ch, 3, padding=1)))

    @property
    def null_class(self) -> int | None:
        return self.num_classes

    def add_target_input(self) -> None:
        """Become a flow-map student: the zero-initialised second time input (the same outputs until it trains)."""
        self.target_proj = target_projection(self.time_dim, self.time_mlp[-1].out_features, like=self)

    def embed(self, t: torch.Tensor, y: torch.Tensor | None, target: torch.Tensor | None = None) -> torch.Tensor:
        dtype = self.conv_in.weight.dtype
        emb = self.time_mlp(features(t, self.time_dim, self.time_features, dtype))
        if self.target_proj is not None:
            emb = emb + self.target_proj(jump_features(t, target, self.time_dim, self.time_features, dtype))
        if self.label_emb is not None:
            if y is None:
                y = torch.full((t.shape[0],), self.num_classes, dtype=torch.long, device=t.device)
            emb = emb + self.label_emb(y.long())
        return emb

    def forward(
        self, z: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None, target: torch.Tensor | None = None
    ) -> torch.Tensor:
        emb = self.embed(t, y, target)
        h = self.conv_in(z)
        hs = [h]
        for layer in self.down:
            if isinstance(layer, nn.ModuleList):
                h = layer[0](h, emb)
                for a in layer[1:]:
                    h = a(h)
            else:
                h = layer(h)
            hs.append(h)
        h = self.mid[2](self.mid[1](self.mid[0](h, emb)), emb)
        for layer in self.up:
            if isinstance(layer, nn.ModuleList):
                h = layer[0](torch.cat([h, hs.pop()], dim=1), emb)
                for a in layer[1:]:
                    h = a(h)
            else:
                h = layer(h)
        return self.out(h)
