"""`multistep data convert KIND SRC OUT`: image datasets from the formats users have on disk -> Parquet shards.

Kinds:
  cifar10   CIFAR-10 "python version" batches: SRC is a folder with data_batch_* files (or one batch file).
            These are Python pickles. Unpickling can run arbitrary code, so they are only ever loaded
            because the user explicitly points at them, and through an unpickler that refuses every
            class except the numpy array/dtype reconstructors such batches contain.
  imagenet  Downsampled ImageNet 32x32 / 64x64 `.npz` batches (Chrabaszcz et al. 2017): SRC is a folder
            of *.npz (or one file) with `data` (n, 3*r*r) uint8 in CHW plane order and `labels` 1..1000
            (stored 0-based); loaded with allow_pickle=False.
  folder    PNG/JPEG images; each sub-folder of SRC is a class (sorted names -> labels 0..K-1), or SRC
            holds the images directly (no labels). Decoded with Pillow to RGB (or L with --grayscale);
            all images must share one size unless --size resizes them. Rows are shuffled (seed 0)
            before writing so that shards mix classes.
Every problem with the input raises multistep.config.ConfigError with one line naming the file.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

from multistep.config import ConfigError

KINDS = ("cifar10", "imagenet", "folder")
IMAGE_EXT = {".png", ".jpg", ".jpeg"}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler for CIFAR batches: allows only the numpy globals an ndarray pickle refers to."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),
    }  # _codecs.encode: bytes in protocol-2 pickles

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        return super().find_class(module, name)


def _files(src: Path, pattern: str, what: str) -> list[Path]:
    if not src.exists():
        raise ConfigError(f"{src}: not found")
    files = sorted(src.glob(pattern)) if src.is_dir() else [src]
    if not files:
        raise ConfigError(f"{src}: no {pattern} files ({what}) in this folder")
    return files


def _planes_to_hwc(data, path: Path, labels, res: int | None = None):
    """(n, 3*r*r) uint8 CHW planes -> (n, r, r, 3) HWC, with checks naming `path`."""
    import numpy as np

    if data.dtype != np.uint8:
        raise ConfigError(f"{path}: 'data' has dtype {data.dtype}, expected uint8")
    side = res or (int(round((data.shape[1] / 3) ** 0.5)) if data.ndim == 2 else 0)
    if data.ndim != 2 or data.shape[1] != 3 * side * side or side == 0:
        raise ConfigError(
            f"{path}: 'data' has shape {data.shape}, expected (n, 3*r*r)" + (f" with r = {res}" if res else "")
        )
    if len(labels) != len(data):
        raise ConfigError(f"{path}: {len(labels)} labels for {len(data)} images")
    return data.reshape(-1, 3, side, side).transpose(0, 2, 3, 1)


def _cifar10(src: Path, writer_for):
    import numpy as np

    for f in _files(src, "data_batch_*", "CIFAR-10 python batches"):
        try:
            with open(f, "rb") as fh:
                d = _NumpyOnlyUnpickler(fh, encoding="bytes").load()
        except Exception as e:
            raise ConfigError(f"{f}: not a CIFAR-10 python batch ({type(e).__name__}: {e})") from None
        if not isinstance(d, dict) or b"data" not in d or b"labels" not in d:
            raise ConfigError(f"{f}: not a CIFAR-10 python batch (needs a dict with b'data' and b'labels')")
        labels = np.asarray(d[b"labels"])
        if (
            not np.issubdtype(labels.dtype, np.integer)
            or labels.ndim != 1
            or labels.min(initial=0) < 0
            or labels.max(initial=0) > 9
        ):
            raise ConfigError(f"{f}: labels must be integers 0..9")
        x = _planes_to_hwc(np.asarray(d[b"data"]), f, labels, 32)
        writer_for(32, 32, 3, True, 10).add(x, labels)


def _imagenet(src: Path, writer_for):
    import numpy as np

    for f in _files(src, "*.npz", "downsampled ImageNet batches"):
        if not zipfile.is_zipfile(f):
            raise ConfigError(f"{f}: not an .npz file (an .npz is a zip archive of .npy arrays)")
        try:
            with np.load(f, allow_pickle=False) as z:
                if "data" not in z.files or "labels" not in z.files:
                    raise ConfigError(f"{f}: needs arrays 'data' and 'labels', has {z.files}")
                data, labels = z["data"], z["labels"]
        except ConfigError:
            raise
        except Exception as e:
            raise ConfigError(f"{f}: not a readable .npz batch ({type(e).__name__}: {e})") from None
        labels = np.asarray(labels).reshape(-1)
        if not np.issubdtype(labels.dtype, np.integer) or labels.min(initial=1) < 1 or labels.max(initial=1) > 1000:
            raise ConfigError(f"{f}: labels must be integers 1..1000 (the downsampled-ImageNet convention)")
        x = _planes_to_hwc(data, f, labels)
        if x.shape[1] not in (32, 64):
            raise ConfigError(f"{f}: images are {x.shape[1]}x{x.shape[1]}, expected 32 or 64")
        writer_for(x.shape[1], x.shape[2], 3, True, 1000).add(x, labels.astype(np.int64) - 1)


def _folder(src: Path, writer_for, size: int | None, grayscale: bool, chunk: int = 1024):
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    if not src.is_dir():
        raise ConfigError(f"{src}: not a folder of images")
    classes = sorted(d.name for d in src.iterdir() if d.is_dir())
    if classes:
        items = [
            (f, k) for k, c in enumerate(classes) for f in sorted((src / c).rglob("*")) if f.suffix.lower() in IMAGE_EXT
        ]
    else:
        items = [(f, -1) for f in sorted(src.iterdir()) if f.suffix.lower() in IMAGE_EXT]
    if not items:
        raise ConfigError(f"{src}: no .png/.jpg/.jpeg images found")
    order = np.random.default_rng(0).permutation(len(items))
    mode, shape, first = ("L" if grayscale else "RGB"), None, None
    for c0 in range(0, len(items), chunk):
        xs, ys = [], []
        for i in order[c0 : c0 + chunk]:
            f, k = items[i]
            try:
                with Image.open(f) as im:
                    im = im.convert(mode)
                    if size:
                        im = im.resize((size, size), Image.Resampling.BICUBIC)
                    a = np.asarray(im, dtype=np.uint8).reshape(im.height, im.width, -1)
            except (UnidentifiedImageError, OSError) as e:
                raise ConfigError(f"{f}: cannot decode image ({e})") from None
            if shape is None:
                shape, first = a.shape, f
            elif a.shape != shape:
                raise ConfigError(
                    f"{f}: image is {a.shape[1]}x{a.shape[0]} but {first} is {shape[1]}x{shape[0]} (use --size to resize)"
                )
            xs.append(a)
            ys.append(k)
        w = writer_for(*shape, bool(classes), len(classes) or None, classes or None)
        w.add(np.stack(xs), np.asarray(ys, np.int64) if classes else None)


def convert(
    kind: str,
    src: str | os.PathLike,
    out_dir: str | os.PathLike,
    shard_size: int = 10000,
    size: int | None = None,
    grayscale: bool = False,
) -> list[Path]:
    """Convert SRC (see the module docstring) into shard-*.parquet files under out_dir; returns their paths. The
    shards are written into a temporary folder beside out_dir and moved there only when every input converted."""
    from multistep.atomic import check_output_folder, staged_folder
    from multistep.data.parquet import SHARD_GLOB

    if kind not in KINDS:
        raise ConfigError(f"unknown data kind {kind!r}; expected one of {', '.join(KINDS)}")
    if shard_size < 1:
        raise ConfigError(f"--shard-size must be >= 1, got {shard_size}")
    if size is not None and size < 1:
        raise ConfigError(f"--size must be >= 1, got {size}")
    src, out = Path(src), Path(out_dir)
    check_output_folder(out, "OUT")
    if out.is_dir() and any(out.glob(SHARD_GLOB)):
        raise ConfigError(f"{out}: already contains {SHARD_GLOB} files; choose an empty folder")
    with staged_folder(out, "OUT") as tmp:  # a failure on the last input leaves OUT as it was
        paths = _convert(kind, src, tmp, shard_size, size, grayscale)
    return [out / p.name for p in paths]


def _convert(kind, src: Path, out: Path, shard_size: int, size, grayscale) -> list[Path]:
    from multistep.data.parquet import ShardWriter

    state: dict = {}

    def writer_for(h, w, c, labels, num_classes=None, class_names=None):
        key = (h, w, c, labels)
        if "writer" not in state:
            try:
                state["writer"] = ShardWriter(out, shard_size, h, w, c, labels, num_classes, class_names)
            except ValueError as e:
                raise ConfigError(str(e)) from None
            state["key"] = key
        elif state["key"] != key:
            raise ConfigError(f"{src}: inputs have mixed image shapes {state['key'][:3]} and {key[:3]}")
        return state["writer"]

    if kind == "cifar10":
        _cifar10(src, writer_for)
    elif kind == "imagenet":
        _imagenet(src, writer_for)
    else:
        _folder(src, writer_for, size, grayscale)
    return state["writer"].close()


def cmd_data_convert(args) -> int:
    paths = convert(args.kind, args.src, args.out, args.shard_size, args.size, args.grayscale)
    from multistep.data.parquet import shard_info

    info = shard_info(paths[0])
    rows = sum(shard_info(p).rows for p in paths)
    print(
        f"wrote {rows} images ({info.height}x{info.width}x{info.channels}"
        f"{', labels' if info.has_labels else ''}) in {len(paths)} shard(s) under {Path(args.out)}, with "
        f"manifest.json (each shard's sha256 and row count, checked before a sweep or teacher starts)"
    )
    return 0
