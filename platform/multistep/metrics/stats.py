"""Feature statistics in float64: mergeable sums for DDP, and a content-hashed on-disk cache of reference statistics.

mu = S / n,  Sigma = (Q - n mu mu^T) / (n - 1),  with S = sum_i f_i and Q = sum_i f_i f_i^T.
(n, S, Q) add across batches and ranks, so an all-reduce (sum) of them is exact; float64 keeps the
cancellation in Q - n mu mu^T harmless for features whose mean is not many orders above their spread.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np

REQUIRED_KEYS = ("dataset", "extractor", "samples")  # what a reference statistic is computed from


def _as_f64(features) -> np.ndarray:
    if hasattr(features, "detach"):  # torch tensor
        features = features.detach().cpu().double().numpy()
    f = np.asarray(features, np.float64)
    return f.reshape(len(f), -1)


class StatsAccumulator:
    """Running n, sum and sum of outer products of (n, D) features."""

    def __init__(self, dim: int | None = None):
        self.n = 0
        self.sum = None if dim is None else np.zeros(dim)
        self.outer = None if dim is None else np.zeros((dim, dim))

    @property
    def dim(self) -> int | None:
        return None if self.sum is None else len(self.sum)

    def _init(self, dim: int) -> None:
        if self.sum is None:
            self.sum, self.outer = np.zeros(dim), np.zeros((dim, dim))
        elif dim != self.dim:
            raise ValueError(f"feature dimension {dim} does not match the accumulator's {self.dim}")

    def update(self, features) -> StatsAccumulator:
        f = _as_f64(features)
        self._init(f.shape[1])
        self.n += len(f)
        self.sum += f.sum(0)
        self.outer += f.T @ f
        return self

    def merge(self, other: StatsAccumulator) -> StatsAccumulator:
        """Add another accumulator's sums into this one (what an all-reduce does across ranks)."""
        if other.sum is None:
            return self
        self._init(other.dim)
        self.n += other.n
        self.sum += other.sum
        self.outer += other.outer
        return self

    def state(self) -> dict[str, np.ndarray]:
        """Arrays to all-reduce (sum) or save: n, sum, outer."""
        return {"n": np.array(self.n, np.int64), "sum": self.sum, "outer": self.outer}

    @classmethod
    def from_state(cls, state: dict) -> StatsAccumulator:
        acc = cls()
        acc.n, acc.sum, acc.outer = (
            int(state["n"]),
            np.array(state["sum"], np.float64),
            np.array(state["outer"], np.float64),
        )
        return acc

    def all_reduce(self) -> StatsAccumulator:
        """Sum (n, S, Q) over the torch.distributed default group in place (no-op when it is not initialised)."""
        import torch
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return self
        dev = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
        flat = torch.from_numpy(np.concatenate([[float(self.n)], self.sum, self.outer.ravel()])).to(dev)
        dist.all_reduce(flat)
        flat = flat.cpu().numpy()
        d = self.dim
        self.n, self.sum, self.outer = int(round(flat[0])), flat[1 : 1 + d].copy(), flat[1 + d :].reshape(d, d).copy()
        return self

    def mean_cov(self) -> tuple[np.ndarray, np.ndarray]:
        if self.n < 2:
            raise ValueError(f"need at least 2 samples for a covariance, have {self.n}")
        mu = self.sum / self.n
        cov = (self.outer - self.n * np.outer(mu, mu)) / (self.n - 1)
        return mu, (cov + cov.T) / 2


def content_hash(mu: np.ndarray, sigma: np.ndarray) -> str:
    """sha256 (first 16 hex digits) of the float64 bytes and shapes of (mu, sigma)."""
    h = hashlib.sha256()
    for a in (mu, sigma):
        a = np.ascontiguousarray(a, np.float64)
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def _key_json(key: dict) -> str:
    missing = [k for k in REQUIRED_KEYS if k not in key]
    if missing:
        raise ValueError(f"reference-statistics key lacks {missing} (needs {list(REQUIRED_KEYS)})")
    return json.dumps(key, sort_keys=True, separators=(",", ":"), default=str)


def cache_path(key: dict, cache_dir) -> Path:
    text = _key_json(key)
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", f"{key['dataset']}_{key['extractor']}_{key['samples']}")[:80]
    return Path(cache_dir) / f"{slug}-{hashlib.sha256(text.encode()).hexdigest()[:12]}.npz"


def save_npz_atomic(path, **arrays) -> None:
    """Write an .npz atomically (atomic.write_with), so readers never see half a file."""
    from multistep.atomic import write_with

    write_with(path, lambda tmp: np.savez(tmp, **arrays))


def _load(path: Path, text: str):
    """(mu, sigma, hash) from a cache file, or None when it is missing, unreadable, for another key or corrupt."""
    try:
        with np.load(path, allow_pickle=False) as z:
            mu, sigma, key, h = z["mu"], z["sigma"], str(z["key"]), str(z["hash"])
    except (OSError, KeyError, ValueError):
        return None
    if key != text or content_hash(mu, sigma) != h:
        return None
    return mu, sigma, h


def reference_stats(key: dict, compute_fn: Callable, cache_dir) -> tuple[np.ndarray, np.ndarray, str]:
    """(mu, sigma, content hash) for `key` (dataset, extractor, samples, ...), computed by compute_fn() once.

    compute_fn returns (mu, sigma) or a StatsAccumulator. The cache file is named after the key; its
    content hash is re-checked on every read, and a mismatching or unreadable file is recomputed.
    """
    text, path = _key_json(key), cache_path(key, cache_dir)
    hit = _load(path, text) if path.exists() else None
    if hit is not None:
        return hit
    out = compute_fn()
    mu, sigma = out.mean_cov() if isinstance(out, StatsAccumulator) else out
    mu, sigma = np.asarray(mu, np.float64), np.asarray(sigma, np.float64)
    h = content_hash(mu, sigma)
    save_npz_atomic(path, mu=mu, sigma=sigma, key=np.array(text), hash=np.array(h))
    return mu, sigma, h
