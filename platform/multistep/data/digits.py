"""scikit-learn's handwritten digits (1,797 real 8x8 images, shipped with the package: no download).

Pixels (0..16) are scaled to [-1, 1]; images are (n, 1, s, s) float32 with int64 labels 0..9,
optionally upsampled to s = 16 or 32 (nearest or bilinear).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from multistep.data import kinds


def load_digits(size: int = 8, mode: str = "nearest") -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y): x (1797, 1, size, size) float32 in [-1, 1], y (1797,) int64."""
    if size not in (8, 16, 32):
        raise ValueError(f"digits size must be 8, 16 or 32, got {size}")
    if mode not in ("nearest", "bilinear"):
        raise ValueError(f"digits upsampling mode must be 'nearest' or 'bilinear', got {mode!r}")
    try:
        from sklearn.datasets import load_digits as _load
    except ImportError as e:  # pragma: no cover - sklearn is a test dependency
        raise ImportError("the digits dataset needs scikit-learn (pip install scikit-learn)") from e
    d = _load()
    x = torch.from_numpy(d.images.astype(np.float32) / 8.0 - 1.0)[:, None]  # 0..16 -> [-1, 1]
    if size != 8:
        kw = {"align_corners": False} if mode == "bilinear" else {}
        x = F.interpolate(x, size=(size, size), mode=mode, **kw).clamp(-1, 1)
    return x.contiguous(), torch.from_numpy(d.target.astype(np.int64))


def batches(
    x: torch.Tensor, y: torch.Tensor | None, batch_size: int, seed: int = 0
) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """Endless (x, y) batches of in-memory data, reshuffled every epoch (seeded; partial batches dropped)."""
    if batch_size > len(x):
        raise ValueError(f"batch_size {batch_size} exceeds the {len(x)} examples")
    g = torch.Generator().manual_seed(seed)
    while True:
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x) - batch_size + 1, batch_size):
            idx = perm[i : i + batch_size]
            yield x[idx], (y[idx] if y is not None else None)


# -- the data kind `digits` (data/kinds.py) ---------------------------------------------------------------------
def _epochs(d, data, rank: int, world: int, batch_size: int, seed: int):
    """Teacher training on the 1,797 digits: epochs reshuffled per seed (not draws with replacement)."""
    return batches(data.x, data.labels, batch_size, seed=seed)


class DigitsOptions(kinds.Options):
    size: Literal[8, 16, 32] = Field(8, description="image side (8 = the real data, 16/32 nearest-upsampled)")


DIGITS = kinds.register(
    kinds.DataKind(
        name="digits",
        options=DigitsOptions,
        shape=lambda d: (1, d.size, d.size),
        load=lambda d: kinds.ImageData(*load_digits(d.size)),
        label=lambda d: f"digits{d.size}",
        labelled=True,
        batches=_epochs,
    )
)
