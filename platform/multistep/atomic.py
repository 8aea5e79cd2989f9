"""Outputs that appear whole or not at all: a set of files is written into a temporary folder beside its target
and moved into place only when complete, so a failure (bad input found late, a full disk, Ctrl-C) leaves the
target as it was (docs/reliability.md)."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from multistep.config import ConfigError


def _existing_ancestor(p: Path) -> Path:
    while not p.exists():
        p = p.parent
    return p


def check_output_folder(target: str | os.PathLike, flag: str) -> Path:
    """`target` can become an output folder: not a file, and a folder can be made there and written in."""
    t = Path(target).absolute()
    if t.exists() and not t.is_dir():
        raise ConfigError(f"{flag} {target}: exists and is not a folder")
    anc = _existing_ancestor(t)
    try:
        probe = Path(tempfile.mkdtemp(prefix=".multistep-probe-", dir=anc))
        probe.rmdir()
    except OSError as e:
        raise ConfigError(f"{flag} {target}: cannot write in {anc} ({e.strerror})") from None
    return t


@contextlib.contextmanager
def staged_folder(target: str | os.PathLike, flag: str = "OUT"):
    """Yield a temporary folder on the target's filesystem; on success its files land in `target` (a new target
    is one rename; an existing folder receives each file by rename, replacing same-named ones). On any exception
    the temporary folder is removed and `target` is untouched."""
    t = check_output_folder(target, flag)
    tmp = Path(tempfile.mkdtemp(prefix=f".{t.name}.tmp-", dir=_existing_ancestor(t)))
    try:
        yield tmp
        if not t.exists():
            t.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, t)
        else:
            for f in sorted(tmp.iterdir()):
                os.replace(f, t / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write a text file atomically (a temporary file beside it, then a rename)."""
    p = Path(path)
    tmp = p.with_name(f".{p.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, p)
    finally:
        tmp.unlink(missing_ok=True)
    return p
