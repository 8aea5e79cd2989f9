"""Feature extractors behind one interface: `extractor(x) -> (n, D) float64 features`.

- identity:   flattened samples (low-dimensional data).
- inception:  the standard FID detector as a TorchScript file the user supplies by local path
              (`inception-2015-12-05.pt` of StyleGAN/EDM/clean-fid): uint8 NCHW images in, called as
              `model(images, return_features=True)`, 2048 features out. The detector resizes to 299x299
              itself, so images go in at their own resolution. Nothing is ever downloaded.
- classifier: a small MLP trained here on a labelled dataset (e.g. digits), cached on disk by dataset
              and settings; features are its penultimate layer.
Each extractor's `key` identifies its features (name and weights' hash) for the reference-statistics cache.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn


def file_sha256(path, chars: int = 16) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:chars]


def tree_sha256(path, chars: int = 32) -> str:
    """sha256 of a file, or of a folder's files (relative names and contents, in sorted order)."""
    from pathlib import Path

    p = Path(path)
    if p.is_file():
        return file_sha256(p, chars)
    h = hashlib.sha256()
    for f in sorted(q for q in p.rglob("*") if q.is_file()):
        h.update(str(f.relative_to(p)).encode() + b"\0" + file_sha256(f, 64).encode())
    return h.hexdigest()[:chars]


def _tensor(x) -> torch.Tensor:
    return x.detach().cpu() if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))


class Extractor:
    """name: short label used in metric names (fid / fd_<name>); key: what identifies the features."""

    name: str = "extractor"

    @property
    def key(self) -> dict:
        return {"name": self.name}

    def __call__(self, x) -> np.ndarray:
        raise NotImplementedError

    def spec(self) -> dict:
        """What rebuilds this extractor in another process or on another node (`from_spec`)."""
        return {"name": self.name}


class IdentityExtractor(Extractor):
    name = "identity"

    def __call__(self, x) -> np.ndarray:
        x = _tensor(x).double().numpy()
        return x.reshape(len(x), -1)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """uint8 images pass through; floats are read as [-1, 1] and mapped to round((x + 1) * 127.5) in [0, 255]."""
    if x.dtype == torch.uint8:
        return x
    return ((x.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


class InceptionExtractor(Extractor):
    """The TorchScript FID detector at a local `path` (ValueError naming the path when it is missing or unreadable)."""

    name = "inception"

    def __init__(self, path, device: str = "cpu", batch_size: int = 100):
        self.path = Path(path).expanduser()
        if not self.path.is_file():
            raise ValueError(
                f"inception detector not found: {self.path} (give the local path of a TorchScript file "
                "such as inception-2015-12-05.pt; nothing is downloaded)"
            )
        try:
            with warnings.catch_warnings():  # torch 2.13 marks torch.jit deprecated; the TF detector is TorchScript
                warnings.simplefilter("ignore", DeprecationWarning)
                self.model = torch.jit.load(str(self.path), map_location=device).eval()
        except Exception as e:  # torch raises RuntimeError/ValueError variants for bad archives
            from multistep.metrics.inception import load_state_dict_detector

            try:  # the other common file: the same graph's weights as a state dict (metrics/inception.py)
                self.model = load_state_dict_detector(self.path, device)
            except ValueError as e2:
                raise ValueError(
                    f"cannot load TorchScript detector {self.path}: {type(e).__name__}: {e}; {e2}"
                ) from None
        self.device, self.batch_size = torch.device(device), batch_size  # device to run on; images per forward
        self.sha256 = file_sha256(self.path)

    @property
    def key(self) -> dict:
        return {"name": self.name, "sha256": self.sha256}

    def spec(self) -> dict:
        return {
            "name": self.name,
            "path": str(self.path),
            "batch_size": self.batch_size,
        }  # the path must exist there too

    @torch.no_grad()
    def __call__(self, x) -> np.ndarray:
        x = _tensor(x)
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"inception expects NCHW images with 1 or 3 channels, got shape {tuple(x.shape)}")
        out = []
        for i in range(0, len(x), self.batch_size):
            b = to_uint8(x[i : i + self.batch_size])
            if b.shape[1] == 1:
                b = b.repeat(1, 3, 1, 1)  # grayscale -> RGB, as clean-fid does
            out.append(self.model(b.to(self.device), return_features=True).double().cpu())
        return torch.cat(out).reshape(len(x), -1).numpy()


class SmallMLP(nn.Module):
    """Flatten -> Linear(in->width) -> ReLU -> Linear(width->feat) -> ReLU [features] -> Linear(feat->classes)."""

    def __init__(self, in_dim: int, classes: int, width: int, feat_dim: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Flatten(), nn.Linear(in_dim, width), nn.ReLU(), nn.Linear(width, feat_dim), nn.ReLU()
        )
        self.head = nn.Linear(feat_dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def _load_dataset(name: str, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    if name == "digits":
        from multistep.data.digits import load_digits

        return load_digits(size)
    raise ValueError(f"unknown classifier dataset {name!r} (known: digits; or pass data=(x, y) with a dataset name)")


def label_checks(ext, align=None):
    """The LabelChecks of conditional samples (metrics/evaluate.py): the classifier's predict and, for caption data,
    each caption's class (cls_err), and the CLIP alignment (clip_score); None when there is neither."""
    from multistep.metrics.evaluate import LabelChecks

    predict = getattr(ext, "predict", None)
    if predict is None and align is None:
        return None
    return LabelChecks(predict, getattr(ext, "label_classes", None), align)


class ClassifierExtractor(Extractor):
    """Penultimate-layer features of a small MLP trained on (x, y) images, cached in cache_dir by dataset + settings."""

    name = "classifier"

    def __init__(
        self,
        dataset: str = "digits",
        cache_dir="~/.cache/multistep",
        data=None,
        size: int = 8,
        width: int = 256,
        feat_dim: int = 64,
        epochs: int = 20,
        lr: float = 3e-3,
        batch_size: int = 128,
        seed: int = 0,
        device: str = "cpu",
        label_classes=None,
    ):
        # label_classes: caption data (trained on its rows' classes): the class of each caption id, for cls_err
        self.label_classes = None if label_classes is None else [int(c) for c in label_classes]
        # dataset: name (cache key; loads it unless `data` is given); data: optional (x NCHW in [-1, 1], y int labels);
        # size: image side for a named dataset; width, feat_dim: hidden and feature sizes; epochs, lr,
        # batch_size, seed: Adam training; device: where features are computed.
        self.settings = {
            "dataset": dataset,
            "size": size,
            "width": width,
            "feat_dim": feat_dim,
            "epochs": epochs,
            "lr": lr,
            "batch_size": batch_size,
            "seed": seed,
        }
        if data is not None:
            self.settings["data_sha256"] = _data_hash(*data)
        if self.label_classes is not None:
            self.settings["label_classes"] = self.label_classes
        x, y = (_tensor(data[0]).float(), _tensor(data[1]).long()) if data is not None else _load_dataset(dataset, size)
        self.device = torch.device(device)
        tag = hashlib.sha256(json.dumps(self.settings, sort_keys=True).encode()).hexdigest()[:12]
        self.path = Path(cache_dir).expanduser() / f"classifier-{dataset}-{tag}.pt"
        with torch.random.fork_rng(devices=[]):  # seeded initialisation without touching the global RNG
            torch.manual_seed(seed)
            self.in_dim = x[0].numel()
            self.model = SmallMLP(self.in_dim, int(y.max()) + 1, width, feat_dim)
        blob = self._load_cached()
        if blob is not None:
            self.accuracy, self.trained = float(blob["accuracy"]), False
        else:
            self.accuracy, self.trained = self._train(x, y), True
            self._save()
        self.model.to(self.device).eval()
        self.sha256 = file_sha256(self.path)

    def _load_cached(self) -> dict | None:
        """The cached weights loaded into self.model, or None when there are none or they do not load (then retrain)."""
        if not self.path.is_file():
            return None
        try:
            blob = torch.load(self.path, map_location="cpu", weights_only=True)
            self.model.load_state_dict(blob["state"])
            return blob
        except Exception:
            return None

    def _train(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """Adam on a seeded 80/20 split, on one CPU thread (a net this small only loses to threading
        overhead, badly so on a shared machine); returns held-out accuracy."""
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return self._fit(x, y)
        finally:
            torch.set_num_threads(threads)

    def _fit(self, x: torch.Tensor, y: torch.Tensor) -> float:
        g = torch.Generator().manual_seed(self.settings["seed"])
        perm = torch.randperm(len(x), generator=g)
        cut = int(0.8 * len(x))
        tr, te = perm[:cut], perm[cut:]
        opt = torch.optim.Adam(self.model.parameters(), lr=self.settings["lr"])
        bs = self.settings["batch_size"]
        for _ in range(self.settings["epochs"]):
            order = tr[torch.randperm(len(tr), generator=g)]
            for i in range(0, len(order), bs):
                idx = order[i : i + bs]
                loss = nn.functional.cross_entropy(self.model(x[idx]), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
        with torch.no_grad():
            return float((self.model(x[te]).argmax(1) == y[te]).float().mean()) if len(te) else float("nan")

    def _save(self) -> None:
        from multistep.atomic import write_with

        blob = {"state": self.model.state_dict(), "accuracy": self.accuracy, "settings": self.settings}
        write_with(self.path, lambda tmp: torch.save(blob, tmp))

    @property
    def key(self) -> dict:
        return {"name": self.name, **self.settings, "sha256": self.sha256}

    @torch.no_grad()
    def predict(self, feats) -> np.ndarray:
        """Class predictions (argmax of the head) from this extractor's features."""
        return self.model.head(_tensor(feats).float().to(self.device)).argmax(1).cpu().numpy()

    def spec(self) -> dict:
        """The trained weights travel with the spec: other nodes need neither the data nor this cache."""
        return {
            "name": self.name,
            "state": self.model.state_dict(),
            "settings": self.settings,
            "in_dim": self.in_dim,
            "accuracy": self.accuracy,
            "sha256": self.sha256,
        }

    @classmethod
    def from_state(cls, spec: dict, device: str = "cpu") -> ClassifierExtractor:
        self = cls.__new__(cls)
        st = self.settings = dict(spec["settings"])
        self.label_classes = st.get("label_classes")
        self.in_dim, self.accuracy, self.sha256, self.trained, self.path = (
            spec["in_dim"],
            spec["accuracy"],
            spec["sha256"],
            False,
            None,
        )
        self.model = SmallMLP(self.in_dim, spec["state"]["head.weight"].shape[0], st["width"], st["feat_dim"])
        self.model.load_state_dict(spec["state"])
        self.device = torch.device(device)
        self.model.to(self.device).eval()
        return self

    @torch.no_grad()
    def __call__(self, x, batch_size: int = 1024) -> np.ndarray:
        x = _tensor(x).float()
        x = x.reshape(len(x), -1)  # images or their flattened pixels
        if x.shape[1] != self.in_dim:
            raise ValueError(f"classifier trained on {self.in_dim} values per sample, got {x.shape[1]}")
        out = [
            self.model.body(x[i : i + batch_size].to(self.device)).double().cpu() for i in range(0, len(x), batch_size)
        ]
        return torch.cat(out).numpy()


def _data_hash(x, y) -> str:
    h = hashlib.sha256()
    for a in (x, y):
        a = np.ascontiguousarray(_tensor(a).numpy())
        h.update(str((a.dtype, a.shape)).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


class DecodedExtractor(Extractor):
    """A latent teacher's samples as the pipeline VAE decodes them, flattened: FD of latents in pixel space."""

    name = "pixel"

    def __init__(self, path: str, device: str = "cpu"):
        from multistep.teachers.text_to_image import load_vae

        self.path, self.device = str(path), torch.device(device)
        self.vae = load_vae(Path(path)).to(self.device)
        self.sha256 = tree_sha256(Path(path) / "vae", 64)

    @property
    def key(self) -> dict:
        return {"name": self.name, "decoded_by": "vae", "vae_sha256": self.sha256}

    def spec(self) -> dict:
        return {"name": "decoded", "path": self.path}

    def decode(self, x) -> torch.Tensor:
        """Latents -> images in [-1, 1] (float32, on this extractor's device)."""
        from multistep.teachers.text_to_image import decode_latents

        return decode_latents(self.vae, _tensor(x).float().to(self.device))

    def __call__(self, x) -> np.ndarray:
        images = self.decode(x)
        return images.reshape(len(images), -1).double().cpu().numpy()


EXTRACTORS = {"identity": IdentityExtractor, "inception": InceptionExtractor, "classifier": ClassifierExtractor}


def from_spec(spec: dict, device: str = "cpu") -> Extractor:
    """The extractor a `spec()` describes, on `device`."""
    if spec["name"] == "classifier":
        return ClassifierExtractor.from_state(spec, device)
    if spec["name"] == "inception":
        return InceptionExtractor(spec["path"], device, spec["batch_size"])
    if spec["name"] == "decoded":
        return DecodedExtractor(spec["path"], device)
    return make_extractor(spec["name"])


def features_fn(extractor: Extractor, shape):
    """samples (n, *shape) or their flattened rows (n, d) -> (n, D) float64 features (rows are reshaped first)."""

    def features(x) -> np.ndarray:
        x = _tensor(x)
        return extractor(x.reshape(len(x), *shape))

    return features


def make_extractor(name: str, **kw) -> Extractor:
    """make_extractor('identity'), make_extractor('inception', path=...), make_extractor('classifier', dataset='digits', cache_dir=...)."""
    if name not in EXTRACTORS:
        raise ValueError(f"unknown extractor {name!r} (choose from {sorted(EXTRACTORS)})")
    return EXTRACTORS[name](**kw)
