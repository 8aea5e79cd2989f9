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
  imagefolder  captioned images for text-to-image distillation, in the folder convention of diffusers' training
            scripts: SRC holds the images and either metadata.jsonl (one JSON object per line: "file_name", the
            image's path relative to SRC, "text", its caption, and optionally an integer "label") or captions.csv
            (a header row with file_name,text and optionally label, then one row per image). Images are decoded
            as for `folder` (--size, --grayscale); rows keep the file's order; each shard gets a `caption` column
            (and `label` when the rows have labels). Every row is checked (JSON/CSV, file_name present, inside
            SRC, unique and found, caption not empty, label a non-negative integer) before any image is decoded
            or anything is written; an image that does not decode (or differs in size without --size) stops the
            conversion with OUT as it was. Images not named in the file are ignored.
Every problem with the input raises multistep.config.ConfigError with one line naming the file (and for
imagefolder the 1-based line of the metadata file: SRC/metadata.jsonl:12: image 'x.png' not found).
"""

from __future__ import annotations

import csv
import io
import json
import os
import pickle
import re
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from multistep.config import ConfigError

IMAGE_EXT = {".png", ".jpg", ".jpeg"}
CAPTION_FILES = ("metadata.jsonl", "captions.csv")  # imagefolder: exactly one of them in SRC


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


def _decode(f: Path, mode: str, size: int | None, fail: Callable[[Exception], str]):
    """One image file -> uint8 (H, W, C) in `mode` ("RGB" or "L"), resized to size x size (bicubic) when given; an
    image Pillow cannot read raises ConfigError(fail(error))."""
    import numpy as np
    from PIL import Image

    try:
        with Image.open(f) as im:
            im = im.convert(mode)
            if size:
                im = im.resize((size, size), Image.Resampling.BICUBIC)
            return np.asarray(im, dtype=np.uint8).reshape(im.height, im.width, -1)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:  # OSError: UnidentifiedImageError
        raise ConfigError(fail(e)) from None


def _folder(src: Path, writer_for, size: int | None, grayscale: bool, chunk: int = 1024):
    import numpy as np

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
            a = _decode(f, mode, size, lambda e, f=f: f"{f}: cannot decode image ({e})")
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


# -- imagefolder: captioned images (metadata.jsonl / captions.csv) ---------------------------------
@dataclass(frozen=True)
class CaptionRow:
    line: int  # 1-based line of the metadata file
    name: str  # file_name as written there
    path: Path
    text: str
    label: int | None


def _text(meta: Path) -> str:
    """The metadata file as text (UTF-8, a leading BOM dropped); bytes that are not UTF-8 are refused by line."""
    raw = meta.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ConfigError(f"{meta}:{line}: not UTF-8 text") from None


def _jsonl_records(meta: Path) -> Iterator[tuple[int, dict]]:
    for i, line in enumerate(_text(meta).split("\n"), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{meta}:{i}: not JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(rec, dict):
            raise ConfigError(f"{meta}:{i}: not a JSON object (got {type(rec).__name__})")
        yield i, rec


def _csv_records(meta: Path) -> Iterator[tuple[int, dict]]:
    reader = csv.reader(io.StringIO(_text(meta), newline=""))
    header, end = None, 0  # end: the last line of the previous record (a quoted field may span lines)
    try:
        for row in reader:
            start, end = end + 1, reader.line_num
            if not row or row == [""]:
                continue
            if header is None:
                header = [h.strip() for h in row]
                if "file_name" not in header or "text" not in header:
                    raise ConfigError(f"{meta}:{start}: header needs columns file_name and text, got {','.join(row)}")
                if len(set(header)) != len(header):
                    raise ConfigError(f"{meta}:{start}: header repeats a column: {','.join(row)}")
                continue
            if len(row) != len(header):
                raise ConfigError(f"{meta}:{start}: {len(row)} fields, the header has {len(header)}")
            rec = dict(zip(header, row))
            label = rec.pop("label", "")
            if label.strip():  # a number, else left as written for the label check to name
                rec["label"] = int(label) if re.fullmatch(r"\s*\d+\s*", label) else label
            yield start, rec
    except csv.Error as e:
        raise ConfigError(f"{meta}:{reader.line_num}: not CSV ({e})") from None


def _image_path(src: Path, root: Path, rec: dict, fail: Callable[[str], ConfigError]) -> tuple[str, Path]:
    name = rec.get("file_name")
    if name is None or name == "":
        raise fail("missing file_name")
    if not isinstance(name, str):
        raise fail(f"file_name must be a string, got {type(name).__name__}")
    path = Path(os.path.normpath(root / name))  # lexically: a symlink inside SRC may point anywhere
    if not path.is_relative_to(root):
        raise fail(f"image {name!r} is outside {src}")
    if not path.is_file():
        raise fail(f"image {name!r} not found")
    return name, path


def _caption_and_label(rec: dict, fail: Callable[[str], ConfigError]) -> tuple[str, int | None]:
    text = rec.get("text")
    if text is None:
        raise fail("missing text")
    if not isinstance(text, str):
        raise fail(f"text must be a string, got {type(text).__name__}")
    if not text.strip():
        raise fail("empty caption")
    label = rec.get("label")
    if label is None:
        return text, None
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < 2**63:
        raise fail(f"label must be a non-negative integer, got {label!r}")
    return text, label


def caption_rows(src: str | os.PathLike) -> tuple[Path, list[CaptionRow]]:
    """(the metadata file, its rows) of an imagefolder SRC, every row checked; nothing is decoded or written.
    Raises ConfigError with one line `METAFILE:LINE: why` for the first bad row."""
    src = Path(src)
    if not src.is_dir():
        raise ConfigError(f"{src}: {'not found' if not src.exists() else 'not a folder'} (imagefolder needs a folder)")
    found = [src / n for n in CAPTION_FILES if (src / n).is_file()]
    if len(found) > 1:
        raise ConfigError(f"{src}: has both metadata.jsonl and captions.csv; keep one of them")
    if not found:
        raise ConfigError(
            f"{src}: imagefolder needs metadata.jsonl (one JSON object per line with file_name and text) "
            f"or captions.csv (a header row file_name,text[,label]) in this folder"
        )
    meta, root = found[0], Path(os.path.normpath(src.absolute()))
    records = _jsonl_records(meta) if meta.suffix == ".jsonl" else _csv_records(meta)
    rows: list[CaptionRow] = []
    seen: dict[Path, int] = {}
    for line, rec in records:

        def fail(why: str, line=line) -> ConfigError:
            return ConfigError(f"{meta}:{line}: {why}")

        name, path = _image_path(src, root, rec, fail)
        if path in seen:
            raise fail(f"duplicate file_name {name!r} (also on line {seen[path]})")
        seen[path] = line
        text, label = _caption_and_label(rec, fail)
        if rows and (label is None) != (rows[0].label is None):
            first = rows[0].line
            raise fail(
                f"missing label (line {first} has one; give every row a label or none)"
                if label is None
                else f"label given, but line {first} has none (give every row a label or none)"
            )
        rows.append(CaptionRow(line, name, path, text, label))
    if not rows:
        raise ConfigError(f"{meta}: no rows (one per image, with file_name and text)")
    return meta, rows


def _imagefolder(meta: Path, rows: list[CaptionRow], writer_for, size: int | None, grayscale: bool, chunk: int = 1024):
    import numpy as np

    from multistep.config.errors import first_line

    labels = rows[0].label is not None
    num_classes = max(r.label for r in rows) + 1 if labels else None
    mode, shape, first = ("L" if grayscale else "RGB"), None, rows[0]
    for c0 in range(0, len(rows), chunk):
        xs = []
        for r in rows[c0 : c0 + chunk]:
            a = _decode(
                r.path, mode, size, lambda e, r=r: f"{meta}:{r.line}: cannot decode {r.name!r} ({first_line(e)})"
            )
            if shape is None:
                shape = a.shape
            elif a.shape != shape:
                raise ConfigError(
                    f"{meta}:{r.line}: image {r.name!r} is {a.shape[1]}x{a.shape[0]} but {first.name!r} "
                    f"(line {first.line}) is {shape[1]}x{shape[0]} (use --size to resize)"
                )
            xs.append(a)
        part = rows[c0 : c0 + chunk]
        w = writer_for(*shape, labels, num_classes, captions=True)
        w.add(np.stack(xs), np.asarray([r.label for r in part], np.int64) if labels else None, [r.text for r in part])


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
    captions = caption_rows(src) if kind == "imagefolder" else None  # every row checked before anything is written
    with staged_folder(out, "OUT") as tmp:  # a failure on the last input leaves OUT as it was
        paths = _convert(kind, src, tmp, shard_size, size, grayscale, captions)
    return [out / p.name for p in paths]


def _convert(kind, src: Path, out: Path, shard_size: int, size, grayscale, captions=None) -> list[Path]:
    from multistep.data.parquet import ShardWriter

    state: dict = {}

    def writer_for(h, w, c, labels, num_classes=None, class_names=None, captions=False):
        key = (h, w, c, labels, captions)
        if "writer" not in state:
            try:
                state["writer"] = ShardWriter(
                    out, shard_size, h, w, c, labels, num_classes, class_names, captions=captions
                )
            except ValueError as e:
                raise ConfigError(str(e)) from None
            state["key"] = key
        elif state["key"] != key:
            raise ConfigError(f"{src}: inputs have mixed image shapes {state['key'][:3]} and {key[:3]}")
        return state["writer"]

    SOURCES[kind](src, writer_for, size, grayscale, captions)
    return state["writer"].close()


# How each kind of SRC is read: (src, writer_for, size, grayscale, captions) -> None, rows into writer_for(...).add.
SOURCES = {
    "cifar10": lambda src, writer_for, size, grayscale, captions: _cifar10(src, writer_for),
    "imagenet": lambda src, writer_for, size, grayscale, captions: _imagenet(src, writer_for),
    "folder": lambda src, writer_for, size, grayscale, captions: _folder(src, writer_for, size, grayscale),
    "imagefolder": lambda src, writer_for, size, grayscale, captions: _imagefolder(
        *captions, writer_for, size, grayscale
    ),
}
KINDS = tuple(SOURCES)
