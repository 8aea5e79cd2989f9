"""Checkpoint files that carry their own integrity: the torch.save payload, then a trailer with its sha256.

    <payload: torch.save bytes> b"\\nmultistep-sha256:" <64 hex digits> b"\\n"

`save` writes payload and trailer in one file, atomically (atomic.write_with: tmp + fsync + rename), so the checksum can never belong
to another payload. `load` verifies it and raises CorruptCheckpoint ("... is corrupt: checksum mismatch") before
unpickling anything; it reads with torch.load(weights_only=True). Files written before the trailer existed load
unverified. No Ray, no MLflow.

`open_checkpoint(path)` is the one reader `multistep eval`, `sample` and `export` use: it verifies the file and says
which of the platform's checkpoint formats it holds, a teacher file of `multistep teacher` (format
"multistep-teacher", train/teacher.py) or a sweep trial's state.pt (format "multistep-trial", sweep/worker.py; the
files written before the tag by their version and EMA weights); anything else is one line naming the file.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from multistep.atomic import write_with

log = logging.getLogger(__name__)

TEACHER_FORMAT = "multistep-teacher"  # a `multistep teacher` file (train/teacher.py)
TRIAL_FORMAT = "multistep-trial"  # a sweep trial's state.pt (sweep/worker.py)
TRAILER = b"\nmultistep-sha256:"
TRAILER_LEN = len(TRAILER) + 64 + 1


class CorruptCheckpoint(ValueError):
    pass


def save(path: str | os.PathLike, payload) -> Path:
    """torch.save(payload) + its sha256 trailer, written to a temporary file beside `path` and renamed into place."""
    p = Path(path)
    buf = io.BytesIO()
    torch.save(payload, buf)
    data = buf.getvalue()
    trailer = TRAILER + hashlib.sha256(data).hexdigest().encode() + b"\n"
    write_with(p, lambda tmp: tmp.write_bytes(data + trailer))  # one file: the checksum belongs to this payload
    return p


def read_verified(path: str | os.PathLike) -> bytes:
    """The payload bytes of a checkpoint file, its checksum verified (files without a trailer: as they are)."""
    p = Path(path)
    data = p.read_bytes()
    tail = data[-TRAILER_LEN:]
    if not tail.startswith(TRAILER):
        return data  # written before checksums existed
    payload, digest = data[:-TRAILER_LEN], tail[len(TRAILER) : -1].decode("ascii", "replace")
    if hashlib.sha256(payload).hexdigest() != digest:
        raise CorruptCheckpoint(f"{p} is corrupt: checksum mismatch")
    return payload


def load(path: str | os.PathLike, map_location="cpu"):
    """The verified payload, unpickled with torch.load(weights_only=True)."""
    payload = read_verified(path)
    try:
        return torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)
    except Exception as e:  # truncated zip, foreign or unsafe pickle, text file, ...
        why = str(e).strip().splitlines()[0][:160] if str(e).strip() else ""
        raise CorruptCheckpoint(f"{path}: not a readable checkpoint ({type(e).__name__}: {why})") from None


@dataclass
class Opened:
    kind: str  # "teacher" or "trial"
    path: Path
    blob: dict  # the verified payload


def open_checkpoint(path: str | os.PathLike) -> Opened:
    """A teacher file or a trial checkpoint, verified and named by its format; ConfigError (one line) otherwise."""
    from multistep.config import ConfigError

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: checkpoint not found")
    try:
        blob = load(p)  # checksum verified before anything is unpickled
    except CorruptCheckpoint as e:
        raise ConfigError(str(e)) from None
    if isinstance(blob, dict) and blob.get("format") == TEACHER_FORMAT:
        return Opened("teacher", p, blob)
    state = blob.get("state") if isinstance(blob, dict) else None
    if isinstance(blob, dict) and (
        blob.get("format") == TRIAL_FORMAT or ("version" in blob and isinstance(state, dict) and "ema" in state)
    ):
        return Opened("trial", p, blob)
    raise ConfigError(f"{p}: not a multistep teacher checkpoint nor a trial checkpoint (state.pt with EMA weights)")


# -- caches: values computed once and kept by what decides them -----------------------------------------
def content_hash(obj) -> str:
    """16 hex digits of sha256 over obj as sorted JSON: the key of a cache file."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _pack(x):
    """x with its numpy arrays as tagged tensors and numpy scalars as Python numbers: what torch.load(weights_only)
    reads back (it refuses numpy objects, so a cache holding them would be recomputed every time)."""
    if isinstance(x, np.ndarray):
        return {"__ndarray__": torch.from_numpy(np.ascontiguousarray(x))}
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, dict):
        return {k: _pack(v) for k, v in x.items()}
    return type(x)(_pack(v) for v in x) if isinstance(x, (list, tuple)) else x


def _unpack(x):
    if isinstance(x, dict):
        return x["__ndarray__"].numpy() if set(x) == {"__ndarray__"} else {k: _unpack(v) for k, v in x.items()}
    return type(x)(_unpack(v) for v in x) if isinstance(x, (list, tuple)) else x


def cached(path: Path, compute):
    """The cached value at `path`, else compute() saved there (atomically, with a checksum). A cache file that fails
    to load (truncated, corrupt, from another version) is recomputed with a notice, never a crash."""
    if path.is_file():
        try:
            return _unpack(load(path))
        except CorruptCheckpoint as e:
            log.info(f"cache {path.name}: {str(e).replace(str(path), 'file')}; recomputing it")
    value = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    save(path, _pack(value))
    return value
