"""Outputs that appear whole or not at all: a set of files is written into a temporary folder beside its target
and moved into place only when complete, so a failure (bad input found late, a full disk, Ctrl-C) leaves the
target as it was (docs/reliability.md)."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def existing_ancestor(p: Path) -> Path:
    """`p` itself if it exists, else its nearest existing parent."""
    while not p.exists():
        p = p.parent
    return p


def cannot_write_in(folder: Path) -> str | None:
    """Why nothing can be created in `folder` (a probe folder made and removed), or None. A real probe: os.access
    says yes to root even on /proc."""
    try:
        Path(tempfile.mkdtemp(prefix=".multistep-probe-", dir=folder)).rmdir()
    except OSError as e:
        return e.strerror or type(e).__name__
    return None


def check_output_folder(target: str | os.PathLike, flag: str) -> Path:
    """`target` can become an output folder: not a file, and a folder can be made there and written in. Nothing
    is created."""
    from multistep.config import ConfigError  # (lazily: this module also serves the GPU kit, which has no pydantic)

    t = Path(target).absolute()
    if t.exists() and not t.is_dir():
        raise ConfigError(f"{flag} {target}: exists and is not a folder")
    anc = existing_ancestor(t)
    if why := cannot_write_in(anc):
        raise ConfigError(f"{flag} {target}: cannot write in {anc} ({why})")
    return t


@contextlib.contextmanager
def staged_folder(target: str | os.PathLike, flag: str = "OUT"):
    """Yield a temporary folder on the target's filesystem; on success its files land in `target` (a new target
    is one rename; an existing folder receives each file by rename, replacing same-named ones). On any exception
    the temporary folder is removed and `target` is untouched."""
    t = check_output_folder(target, flag)
    tmp = Path(tempfile.mkdtemp(prefix=f".{t.name}.tmp-", dir=existing_ancestor(t)))
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


def write_with(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """write(tmp) to a temporary file beside `path` (same suffix, so writers that add one do not), flushed to disk,
    then renamed over `path`: readers see the old file or the new one, never half of one."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.stem}.tmp{os.getpid()}{p.suffix}")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, p)
    finally:
        tmp.unlink(missing_ok=True)
    return p


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write a text file atomically."""
    return write_with(path, lambda tmp: tmp.write_text(text))


def no_space(where: str, need_bytes: int | None, what: str, hint: str = "") -> OSError:
    """A full disk as one line (ENOSPC): the folder (or storage URI), what did not fit and its size, the free space
    there (local folders only), and a hint."""
    import errno

    free = None if "://" in where else shutil.disk_usage(existing_ancestor(Path(where))).free
    size = f" of {need_bytes / 2**20:.2f} MiB" if need_bytes is not None else ""
    left = f"; {free / 2**20:.2f} MiB free there" if free is not None else ""
    return OSError(errno.ENOSPC, f"{where}: no space left for {what}{size}{left}{hint}")


def folder_bytes(folder: str | os.PathLike) -> int:
    return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file())
