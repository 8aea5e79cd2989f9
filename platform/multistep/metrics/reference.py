"""Reference statistics from a file: the `.npz` of EDM's fid.py, pytorch-fid and clean-fid (`mu`, `sigma`; optional
`features` for KID), so a FID can be computed against the statistics everyone uses (docs/evaluation.md)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class Reference:
    mu: np.ndarray  # (D,) float64
    sigma: np.ndarray  # (D, D) float64
    features: np.ndarray | None  # (n, D) float64 for KID, or None (a stats-only reference: KID is skipped)
    sha256: str

    @property
    def dim(self) -> int:
        return len(self.mu)

    def to_dict(self) -> dict:
        return {"mu": self.mu, "sigma": self.sigma, "features": self.features, "sha256": self.sha256}

    @classmethod
    def from_dict(cls, d: dict) -> Reference:
        f = d.get("features")
        return cls(np.asarray(d["mu"]), np.asarray(d["sigma"]), None if f is None else np.asarray(f), d["sha256"])


INCEPTION_DIM = 2048  # pool features of the FID Inception-v3


def expected_dim(space: str, shape: tuple) -> int | None:
    """The feature dimension of a metric space for samples of `shape` (None: known only once the extractor exists)."""
    import math

    return {"identity": math.prod(shape), "pixel": math.prod(shape), "inception": INCEPTION_DIM}.get(space)


def load_for(ev) -> Reference | None:
    """The statistics of an eval config's `reference`, or None when it names none."""
    return load(ev.reference) if ev.reference else None


def load(path: str | Path) -> Reference:
    """The reference of an .npz file; ValueError with one line naming what is wrong."""
    p = Path(path)
    try:
        with np.load(p, allow_pickle=False) as z:
            keys = set(z.files)
            if not {"mu", "sigma"} <= keys:
                raise ValueError(
                    f"{p}: no {' and '.join(k for k in ('mu', 'sigma') if k not in keys)} in it (an .npz of mu and sigma, as EDM's fid.py, pytorch-fid and clean-fid write)"
                )
            mu, sigma = z["mu"].astype(np.float64), z["sigma"].astype(np.float64)
            feats = z["features"].astype(np.float64) if "features" in keys else None
    except ValueError as e:
        if str(e).startswith(str(p)):
            raise
        raise ValueError(f"{p}: not a readable .npz file ({e})") from None
    except OSError as e:
        raise ValueError(f"{p}: cannot read it ({e.strerror or e})") from None
    if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
        raise ValueError(f"{p}: mu has shape {mu.shape} and sigma {sigma.shape}; expected (D,) and (D, D)")
    if feats is not None and (feats.ndim != 2 or feats.shape[1] != len(mu)):
        raise ValueError(f"{p}: features have shape {feats.shape}; expected (n, {len(mu)})")
    from multistep.metrics.extractors import file_sha256

    return Reference(mu, sigma, feats, file_sha256(p, 64))


def write(path: str | Path, mu: np.ndarray, sigma: np.ndarray, features: np.ndarray | None = None) -> Path:
    from multistep.atomic import write_with

    arrays = {"mu": mu, "sigma": sigma} | ({} if features is None else {"features": features})
    return write_with(Path(path), lambda tmp: np.savez(tmp, **arrays))
