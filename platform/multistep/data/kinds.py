"""Data kinds: what `data: {kind: NAME, ...}` in a sweep or teacher file means, one registry entry per kind.

Each kind is one file (data/gmm.py, data/digits.py, data/parquet.py) that declares a DataKind next to its loader
and registers it; importing multistep.data registers the built-in ones. The config (config/schema.py) accepts
the registered names, and the sweep's assets, pre-flight, the trial and `multistep teacher` ask the kind, never
the name. Adding a kind: one file and one test (docs/architecture.md, "Adding a data kind").
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from pydantic import BaseModel, ConfigDict

from multistep import registry
from multistep.registry import FieldError  # noqa: F401  (a kind's check raises it)


class ImageData:
    """In-memory images behind the mixture's interface: `.shape` and `.sample(n, generator, dtype)`.

    Rows are drawn with replacement by the generator; uint8 pixels are mapped to [-1, 1] as they are drawn.
    """

    def __init__(
        self,
        x: torch.Tensor,
        labels: torch.Tensor | None = None,
        captions: list[str] | None = None,
        classes: torch.Tensor | None = None,
    ):
        self.x, self.labels = x, labels  # x: (N, C, H, W) uint8 or float in [-1, 1]
        self.shape = tuple(x.shape[1:])
        # caption data: labels are ids into the vocabulary `captions`; classes, where the files have a label
        # column too, are each row's class (the digit of "a handwritten seven"): what a classifier is trained on
        self.captions, self.classes = captions, classes

    def __len__(self) -> int:
        return len(self.x)

    def caption_classes(self) -> list[int]:
        """The class of each caption id (the most frequent class of its rows; -1 for a caption no row has)."""
        out = [-1] * len(self.captions)
        for c in range(len(self.captions)):
            rows = self.classes[self.labels == c]
            if len(rows):
                out[c] = int(torch.bincount(rows.long()).argmax())
        return out

    def sample(self, n: int, generator: torch.Generator | None = None, dtype=torch.float32) -> torch.Tensor:
        return self.sample_labelled(n, generator, dtype)[0]

    def sample_labelled(self, n: int, generator: torch.Generator | None = None, dtype=torch.float32):
        """(x, y): the rows `sample` draws (same generator use) and their labels (None for unlabelled data)."""
        i = torch.randint(len(self.x), (n,), generator=generator)
        return as_float(self.x[i], dtype), None if self.labels is None else self.labels[i].long()


def as_float(x: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    """Images in [-1, 1] as `dtype`: uint8 pixels mapped by p / 127.5 - 1, float images as they are."""
    return x.to(dtype).div_(127.5).sub_(1.0) if x.dtype == torch.uint8 else x.to(dtype)


def sampled_batches(data, batch_size: int, seed: int) -> Iterator:
    """Endless batches drawn with replacement from in-memory data (x, or (x, y) for labelled data)."""
    g = torch.Generator().manual_seed(seed)
    labelled = getattr(data, "labels", None) is not None
    return iter(lambda: data.sample_labelled(batch_size, g) if labelled else data.sample(batch_size, g), None)


class Options(BaseModel):
    """Base of a data kind's fields (unknown keys are the `data:` section's to refuse)."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class DataKind:
    """A data kind's registry entry. The functions take the `data:` config (config.DataCfg) of this kind."""

    name: str  # the YAML data.kind
    # pydantic model of its data.* fields, each with a default: its cache identity and the data line `multistep
    # teacher` prints; the `data:` section is the union of every kind's (config/schema.py DataCfg)
    options: type
    shape: Callable  # cfg -> the shape of one sample, without loading the data (ValueError: a problem with its files)
    load: Callable  # cfg -> the distribution in memory: .shape, .sample(n, g), .sample_labelled(n, g) (ImageData)
    label: Callable  # cfg -> a short description for tags and titles, e.g. gmm[16], digits8, parquet:cifar10
    check: Callable = lambda d: None  # cfg -> None; rules on its fields (raise FieldError), may normalise them
    fd_space: str = "pixel"  # the features of FD under eval.extractor auto: identity (vectors) or pixel (images)
    mixture: bool = False  # a GaussianMixture: the analytic teacher is its exact denoiser, mode coverage is scored
    labelled: bool | None = None  # has class labels: always, never, or None (depends on the files)
    # rows in files (data.path), read per rank: (cfg, rank, world, seed, batch_size) -> a reader whose iterator gives
    # endless batches and whose .batches(start, prefetch, device) resumes after `start` of them (data.parquet.ShardStream)
    stream: Callable | None = None
    first_rows: Callable | None = None  # cfg -> a few rows in memory for checks (default: load)
    batches: Callable | None = None  # (cfg, data, rank, world, batch_size, seed) -> endless training batches of a
    # teacher (default: the stream's, else drawn from the loaded data with replacement)
    # caption data: cfg -> its vocabulary (sorted distinct captions; their indices are the rows' labels) or None
    captions: Callable | None = None

    @property
    def files(self) -> bool:
        """Rows in files: pre-flight reads every byte, trials stream each rank's slice instead of loading it."""
        return self.stream is not None

    def training_batches(self, d, data, rank: int, world: int, batch_size: int, seed: int) -> Iterator:
        if self.batches:
            return self.batches(d, data, rank, world, batch_size, seed)
        if self.stream:
            return iter(self.stream(d, rank, world, seed, batch_size))
        return sampled_batches(data, batch_size, seed)

    def identity(self, d) -> dict:
        """The fields that decide what the data is (cache keys of references, teacher curves, warm starts)."""
        return {"kind": self.name} | {f: getattr(d, f) for f in self.options.model_fields}

    def sample_rows(self, d):
        return (self.first_rows or self.load)(d)


DATA_KINDS: dict[str, DataKind] = {}


def register(kind: DataKind) -> DataKind:
    taken = {f: k.name for k in DATA_KINDS.values() if k.name != kind.name for f in k.options.model_fields}
    if clash := [f for f in kind.options.model_fields if f in taken or f == "kind"]:
        owner = f"data kind {taken[clash[0]]!r}" if clash[0] in taken else "the data section"
        raise ValueError(f"data kind {kind.name!r}: field {clash[0]!r} is already declared by {owner}")
    return registry.register(DATA_KINDS, kind, "data kind")


def data_kind(d) -> DataKind:
    """The registry entry of a `data:` config (its kind was checked against the registry when it was read)."""
    return DATA_KINDS[d.kind]
