"""Image datasets as Parquet shards (pyarrow), streamed per DDP rank.

Shard layout (schema_version "1"): column `image` binary (raw uint8 bytes of one image, HWC or CHW
as the `layout` metadata says), optional column `label` int64, optional column `caption` string (one
caption per image, for text-to-image data); file-level metadata schema_version, height, width, channels,
layout, and optionally num_classes and class_names (JSON list). Readers of images and labels never read
the caption column; read_captions and caption_vocabulary read only it.
Every problem with a shard (missing, unreadable, empty, wrong schema version, wrong column types,
wrong image byte size, a null caption) raises ValueError naming the file. Shards are written in row groups
of ROW_GROUP rows with page checksums, and with a manifest.json of their sha256 and row counts (data/manifest.py).
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from pydantic import Field

from multistep.atomic import write_with
from multistep.data import kinds, manifest

SCHEMA_VERSION = "1"
SHARD_GLOB = "shard-*.parquet"
ROW_GROUP = 1024  # rows: the unit a garbled shard is reported in (data/manifest.py)


@dataclass(frozen=True)
class ShardInfo:
    path: Path
    rows: int
    height: int
    width: int
    channels: int
    layout: str  # "HWC" or "CHW": byte order of one image
    has_labels: bool
    num_classes: int | None
    class_names: list[str] | None
    has_captions: bool = False  # a `caption` string column beside each image

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.channels, self.height, self.width


# -- writing --------------------------------------------------------------------------------------
class ShardWriter:
    """Buffers uint8 NHWC images (+ labels, + captions) and writes `shard_size`-row shards atomically (tmp +
    rename). With captions=True every `add` call takes one caption string per image."""

    def __init__(
        self,
        out_dir: str | os.PathLike,
        shard_size: int,
        height: int,
        width: int,
        channels: int,
        labels: bool,
        num_classes: int | None = None,
        class_names: Sequence[str] | None = None,
        row_group: int = ROW_GROUP,
        captions: bool = False,
    ):
        if shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {shard_size}")
        if shard_size * height * width * channels >= 2**31:
            raise ValueError(f"shard_size {shard_size} makes a shard over 2 GiB of pixels; use a smaller one")
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        if any(self.out.glob(SHARD_GLOB)):
            raise ValueError(f"{self.out}: already contains {SHARD_GLOB} files; choose an empty folder")
        self.shard_size, self.hwc, self.labels, self.captions = shard_size, (height, width, channels), labels, captions
        self.row_group = row_group
        meta = {
            "schema_version": SCHEMA_VERSION,
            "height": height,
            "width": width,
            "channels": channels,
            "layout": "HWC",
        }
        if num_classes is not None:
            meta["num_classes"] = int(num_classes)
        if class_names is not None:
            meta["class_names"] = json.dumps(list(class_names))
        fields = [pa.field("image", pa.binary())] + ([pa.field("label", pa.int64())] if labels else [])
        fields += [pa.field("caption", pa.string())] if captions else []
        self.schema = pa.schema(fields, metadata={k: str(v) for k, v in meta.items()})
        self.buf_x: list[np.ndarray] = []
        self.buf_y: list[np.ndarray] = []
        self.buf_t: list[str] = []
        self.buffered, self.paths, self.entries = 0, [], []

    def add(
        self, images: np.ndarray, labels: np.ndarray | None = None, captions: Sequence[str] | np.ndarray | None = None
    ) -> None:
        images = np.asarray(images)
        if images.dtype != np.uint8:
            raise ValueError(f"images must be uint8, got {images.dtype}")
        if images.ndim != 4 or images.shape[1:] != self.hwc:
            raise ValueError(f"images must be (n, {', '.join(map(str, self.hwc))}) NHWC, got {images.shape}")
        if self.captions:
            texts = _caption_list(captions, len(images))
        elif captions is not None:
            raise ValueError("captions given to a ShardWriter made without captions=True")
        if self.labels:
            labels = np.asarray(labels)
            if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer) or (labels < 0).any():
                raise ValueError(
                    f"labels must be {len(images)} non-negative integers, got shape {labels.shape} dtype {labels.dtype}"
                )
            self.buf_y.append(labels.astype(np.int64))
        if self.captions:
            self.buf_t.extend(texts)
        self.buf_x.append(images)
        self.buffered += len(images)
        while self.buffered >= self.shard_size:
            self._flush(self.shard_size)

    def _flush(self, n: int) -> None:
        x = np.concatenate(self.buf_x)
        self.buf_x = [x[n:]]
        item = int(np.prod(self.hwc))
        offsets = (np.arange(n + 1, dtype=np.int64) * item).astype(np.int32)
        cols = [
            pa.Array.from_buffers(
                pa.binary(), n, [None, pa.py_buffer(offsets), pa.py_buffer(np.ascontiguousarray(x[:n]))]
            )
        ]
        if self.labels:
            y = np.concatenate(self.buf_y)
            self.buf_y = [y[n:]]
            cols.append(pa.array(y[:n], pa.int64()))
        if self.captions:
            cols.append(pa.array(self.buf_t[:n], pa.string()))
            del self.buf_t[:n]
        self.buffered -= n
        path = self.out / f"shard-{len(self.paths):05d}.parquet"
        table = pa.Table.from_arrays(cols, schema=self.schema)
        write_with(
            path, lambda tmp: pq.write_table(table, tmp, row_group_size=self.row_group, write_page_checksum=True)
        )
        self.paths.append(path)
        self.entries.append(manifest.entry(path))

    def close(self) -> list[Path]:
        """Writes the last shard and the folder's manifest.json; returns the shards' paths."""
        if self.buffered:
            self._flush(self.buffered)
        manifest.write_manifest(self.out, self.entries)
        return list(self.paths)


def _caption_list(captions, n: int) -> list[str]:
    """`n` caption strings from a list or a numpy array of str, or ValueError."""
    if captions is None:
        raise ValueError(f"captions must be {n} strings, got None (the writer was made with captions=True)")
    texts = captions.tolist() if isinstance(captions, np.ndarray) else list(captions)
    if len(texts) != n or not all(isinstance(t, str) for t in texts):
        types = sorted({type(t).__name__ for t in texts})
        raise ValueError(f"captions must be {n} strings, got {len(texts)} of type {', '.join(types) or '-'}")
    return texts


def write_shards(
    images: np.ndarray,
    labels: np.ndarray | None,
    out_dir: str | os.PathLike,
    shard_size: int,
    num_classes: int | None = None,
    class_names: Sequence[str] | None = None,
    row_group: int = ROW_GROUP,
    captions: Sequence[str] | None = None,
) -> list[Path]:
    """Write uint8 NHWC images (NHW for one channel), optional int labels and optional caption strings as shards
    of `shard_size` rows."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or len(images) == 0:
        raise ValueError(f"images must be a non-empty (n, H, W, C) array, got shape {images.shape}")
    if labels is not None and num_classes is None:
        num_classes = int(np.max(labels)) + 1 if len(np.asarray(labels)) else None
    w = ShardWriter(
        out_dir,
        shard_size,
        *images.shape[1:],
        labels=labels is not None,
        num_classes=num_classes,
        class_names=class_names,
        row_group=row_group,
        captions=captions is not None,
    )
    w.add(images, labels, captions)
    return w.close()


# -- reading --------------------------------------------------------------------------------------
def list_shards(src: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """A folder -> its shard-*.parquet files (sorted); a file or a list of files -> as given."""
    if isinstance(src, (str, os.PathLike)):
        p = Path(src)
        if p.is_dir():
            paths = sorted(p.glob(SHARD_GLOB))
            if not paths:
                raise ValueError(f"{p}: no {SHARD_GLOB} files in this folder")
            return paths
        return [p]
    paths = [Path(s) for s in src]
    if not paths:
        raise ValueError("no shard files given")
    return paths


def shard_info(path: str | os.PathLike) -> ShardInfo:
    """Read and check a shard's schema and metadata (no pixel data)."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{p}: shard file not found")
    try:
        f = pq.ParquetFile(p)
    except Exception as e:  # pyarrow raises ArrowInvalid / OSError for non-Parquet bytes
        raise ValueError(f"{p}: not a readable Parquet file ({type(e).__name__}: {e})") from None
    meta = {k.decode(): v.decode() for k, v in (f.schema_arrow.metadata or {}).items()}
    version = meta.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ValueError(f"{p}: schema_version {version!r}, expected {SCHEMA_VERSION!r}")
    try:
        h, w, c = (int(meta[k]) for k in ("height", "width", "channels"))
        assert min(h, w, c) >= 1
    except (KeyError, ValueError, AssertionError):
        raise ValueError(f"{p}: metadata needs positive integers height, width, channels") from None
    layout = meta.get("layout", "HWC")
    if layout not in ("HWC", "CHW"):
        raise ValueError(f"{p}: layout {layout!r}, expected 'HWC' or 'CHW'")
    schema = f.schema_arrow
    if "image" not in schema.names or schema.field("image").type not in (pa.binary(), pa.large_binary()):
        got = schema.field("image").type if "image" in schema.names else "no such column"
        raise ValueError(f"{p}: column 'image' must be binary (raw uint8 bytes), got {got}")
    has_labels = "label" in schema.names
    if has_labels and schema.field("label").type != pa.int64():
        raise ValueError(f"{p}: column 'label' must be int64, got {schema.field('label').type}")
    has_captions = "caption" in schema.names
    if has_captions and schema.field("caption").type not in (pa.string(), pa.large_string()):
        raise ValueError(f"{p}: column 'caption' must be string, got {schema.field('caption').type}")
    if f.metadata.num_rows == 0:
        raise ValueError(f"{p}: empty shard (0 rows)")
    nc = int(meta["num_classes"]) if "num_classes" in meta else None
    names = json.loads(meta["class_names"]) if "class_names" in meta else None
    return ShardInfo(p, f.metadata.num_rows, h, w, c, layout, has_labels, nc, names, has_captions)


def read_shard(path: str | os.PathLike, info: ShardInfo | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """(images uint8 NHWC, labels int64 or None) of one shard, every image's byte size checked."""
    info = info or shard_info(path)
    p = info.path
    try:
        table = pq.read_table(p, columns=["image"] + (["label"] if info.has_labels else []))  # never the captions
    except Exception as e:
        raise ValueError(f"{p}: cannot read Parquet data ({type(e).__name__}: {e})") from None
    col = table.column("image").combine_chunks()
    item = info.height * info.width * info.channels
    lengths = pc.binary_length(col)
    if col.null_count or pc.min(lengths).as_py() != item or pc.max(lengths).as_py() != item:
        bad = np.flatnonzero(lengths.fill_null(-1).to_numpy(zero_copy_only=False) != item)[0]
        raise ValueError(
            f"{p}: row {bad}: image has {lengths[bad].as_py()} bytes, expected {item} "
            f"({info.layout} {info.height}x{info.width}x{info.channels} uint8)"
        )
    n = len(col)
    odt = np.int64 if col.type == pa.large_binary() else np.int32
    offsets = np.frombuffer(col.buffers()[1], odt)[col.offset : col.offset + n + 1]
    data = np.frombuffer(col.buffers()[2], np.uint8)[offsets[0] : offsets[-1]]
    if info.layout == "HWC":
        x = data.reshape(n, info.height, info.width, info.channels)
    else:
        x = data.reshape(n, info.channels, info.height, info.width).transpose(0, 2, 3, 1)
    y = table.column("label").to_numpy().astype(np.int64) if info.has_labels else None
    if y is not None and (y < 0).any():
        raise ValueError(f"{p}: negative labels")
    return x, y


def read_captions(path: str | os.PathLike) -> list[str] | None:
    """The captions of one shard, in row order (only its `caption` column is read), or None for a shard without
    captions. A null caption raises ValueError naming the shard and the row."""
    info = shard_info(path)
    if not info.has_captions:
        return None
    try:
        col = pq.read_table(info.path, columns=["caption"]).column("caption")
    except Exception as e:
        raise ValueError(f"{info.path}: cannot read Parquet data ({type(e).__name__}: {e})") from None
    if col.null_count:
        bad = np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0]
        raise ValueError(f"{info.path}: row {bad}: null caption")
    return col.to_pylist()


def caption_vocabulary(shards: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """The sorted unique captions over `shards` (a folder, a shard or a list of shards, as list_shards takes them),
    reading only their caption columns; a shard without captions raises ValueError naming it."""
    vocab: set[str] = set()
    for p in list_shards(shards):
        texts = read_captions(p)
        if texts is None:
            raise ValueError(
                f"{p}: no 'caption' column (convert captioned images with `multistep data convert imagefolder`)"
            )
        vocab.update(texts)
    return sorted(vocab)


def caption_ids(path, vocabulary: list[str]) -> np.ndarray:
    """The caption id (index into the vocabulary) of every row of one shard (int64)."""
    index = {c: i for i, c in enumerate(vocabulary)}
    try:
        return np.array([index[c] for c in read_captions(path) or []], np.int64)
    except KeyError as e:
        raise ValueError(f"{path}: caption {e.args[0]!r} is not in the data's vocabulary") from None


class ShardStream:
    """Float32 NCHW batches in [-1, 1] (+ int64 labels or None) for one DDP rank.

    The global row range [0, N) over all shards (in the given order) is cut into `world_size`
    contiguous slices; rank r reads only the shards overlapping its slice. Every epoch the rank's
    pieces (one per overlapping shard) are visited in a fresh random order, `window` pieces at a
    time, whose rows are pooled and permuted (seeded by seed, rank, epoch). When the whole slice fits
    in one window it is read once and kept in memory.
    """

    def __init__(
        self,
        paths,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        batch_size: int = 64,
        drop_last: bool = True,
        window: int = 4,
        captions: list[str] | None = None,
    ):
        """captions: the vocabulary of caption data; its batches' labels are then caption ids (caption_ids)."""
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world_size {world_size}")
        self.infos = [shard_info(p) for p in list_shards(paths)]
        first = self.infos[0]
        for i in self.infos[1:]:
            if (i.shape, i.has_labels) != (first.shape, first.has_labels):
                raise ValueError(
                    f"{i.path}: shape {i.shape} labels={i.has_labels} differs from {first.path}: "
                    f"shape {first.shape} labels={first.has_labels}"
                )
        self.shape, self.has_labels = first.shape, first.has_labels or bool(captions)
        self.vocabulary = captions
        self.num_classes = first.num_classes
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.batch_size, self.drop_last, self.window = batch_size, drop_last, max(1, window)
        starts = np.cumsum([0] + [i.rows for i in self.infos])
        self.num_rows = int(starts[-1])
        lo, hi = rank * self.num_rows // world_size, (rank + 1) * self.num_rows // world_size
        self.rank_rows = hi - lo
        if self.rank_rows == 0 or (drop_last and self.rank_rows < batch_size):
            raise ValueError(
                f"rank {rank} of {world_size} gets {self.rank_rows} rows of {self.num_rows} "
                f"(in {first.path.parent}), fewer than batch_size {batch_size}"
            )
        # (shard index, first row, end row) of every shard overlapping [lo, hi)
        self.pieces = [
            (k, max(lo, s) - s, min(hi, e) - s)
            for k, (s, e) in enumerate(zip(starts[:-1], starts[1:]))
            if s < hi and e > lo
        ]
        self._cache: dict[int, tuple[np.ndarray, np.ndarray | None]] = {}

    def _piece(self, j: int) -> tuple[np.ndarray, np.ndarray | None]:
        if j in self._cache:
            return self._cache[j]
        k, a, b = self.pieces[j]
        x, y = read_shard(self.infos[k].path, self.infos[k])
        if self.vocabulary:
            y = caption_ids(self.infos[k].path, self.vocabulary)
        out = (x[a:b], None if y is None else y[a:b])
        if len(self.pieces) <= self.window:
            self._cache[j] = out
        return out

    @staticmethod
    def _nchw(x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))

    @staticmethod
    def _batch(x: np.ndarray, y: np.ndarray | None, device=None):
        """uint8 NCHW (+ labels) -> float32 in [-1, 1] (+ int64 labels) on `device`: the bytes travel as uint8 (a
        quarter of float32's) and are converted there."""
        xt = torch.from_numpy(x).to(device).float().div_(127.5).sub_(1.0)
        return xt, (torch.from_numpy(y).to(device) if y is not None else None)

    @property
    def batches_per_epoch(self) -> int:
        """Rows left over at a window's end join the next window, so an epoch is every full batch of the slice."""
        return self.rank_rows // self.batch_size + (0 if self.drop_last or self.rank_rows % self.batch_size == 0 else 1)

    def epoch_arrays(self, epoch: int, skip: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        """One pass over this rank's slice in the order of `epoch`, without its first `skip` batches, as uint8 NCHW
        arrays (+ labels): numpy and pyarrow only, so a reader thread can run it beside the training step."""
        rng = np.random.default_rng([self.seed, self.rank, epoch])
        order = rng.permutation(len(self.pieces))
        carry_x, carry_y = np.zeros((0, self.shape[1], self.shape[2], self.shape[0]), np.uint8), np.zeros(0, np.int64)
        n = 0  # batches of this epoch so far
        for g in range(0, len(order), self.window):
            parts = [self._piece(int(j)) for j in order[g : g + self.window]]
            x = np.concatenate([carry_x] + [p[0] for p in parts])  # rows left from the last window join this one
            perm = rng.permutation(len(x))
            y = np.concatenate([carry_y] + [p[1] for p in parts])[perm] if self.has_labels else None
            x = x[perm]
            full = len(x) // self.batch_size * self.batch_size
            for i in range(0, full, self.batch_size):
                if n >= skip:
                    yield self._nchw(x[i : i + self.batch_size]), None if y is None else y[i : i + self.batch_size]
                n += 1
            carry_x, carry_y = x[full:], (y[full:] if y is not None else carry_y)
        if len(carry_x) and not self.drop_last and n >= skip:
            yield self._nchw(carry_x), carry_y if self.has_labels else None

    def epoch_batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        """One pass over this rank's slice in the order of `epoch` as float32 NCHW batches in [-1, 1]."""
        return (self._batch(x, y) for x, y in self.epoch_arrays(epoch))

    def arrays(self, start: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        """Endless uint8 batches, epoch after epoch, from batch number `start` on (what a resumed trial has not seen
        yet): whole epochs are skipped by count, the rest of the first one without copying its batches."""
        first, skip = divmod(start, self.batches_per_epoch)
        yield from self.epoch_arrays(first, skip)
        for epoch in itertools.count(first + 1):
            yield from self.epoch_arrays(epoch)

    def batches(
        self, start: int = 0, prefetch: int = 0, device=None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        """Endless float32 batches on `device` (default CPU) from batch number `start` on; prefetch > 0: a reader
        thread keeps that many batches ready (shard reads and shuffles beside the training step, so the accelerator
        does not wait on them)."""
        source = self.arrays(start)
        if prefetch > 0:
            source = Prefetch(source, prefetch)
        return (self._batch(x, y, device) for x, y in source)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        return self.batches()


class Prefetch:
    """Items of `source` made `depth` ahead by a daemon reader thread; an error there is raised here, in order.

    The thread runs only numpy/pyarrow work (no torch: a process must never exit while a torch op runs in a
    daemon thread) and holds no reference to this object: once the consumer drops it (or calls close()), the
    thread stops at its next item."""

    _END = object()

    def __init__(self, source, depth: int = 2):
        import queue
        import threading

        self._q: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        threading.Thread(
            target=Prefetch._fill, args=(iter(source), self._q, self._stop), name="shard-prefetch", daemon=True
        ).start()

    @staticmethod
    def _fill(it, q, stop) -> None:
        import queue

        def put(item) -> bool:  # False once the consumer has gone
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    pass
            return False

        try:
            for item in it:
                if not put(item):
                    return
            put(Prefetch._END)
        except BaseException as e:  # handed to the consumer
            put(e)

    def __iter__(self):
        return self

    def __next__(self):
        if self._stop.is_set():  # closed, ended or failed: the reader puts nothing more
            raise StopIteration
        item = self._q.get()
        if item is Prefetch._END or isinstance(item, BaseException):
            self._stop.set()
            if item is Prefetch._END:
                raise StopIteration
            raise item
        return item

    def close(self) -> None:
        self._stop.set()

    __del__ = close


# -- the data kind `parquet` (data/kinds.py) --------------------------------------------------------------------
def _check(d) -> None:
    if d.path is None:
        raise kinds.FieldError(
            "path", f"required for kind: parquet (a folder of {SHARD_GLOB} files from `multistep data convert`)"
        )
    p = Path(d.path).expanduser().resolve()
    if not p.exists():
        raise kinds.FieldError("path", f"{p}: not found")
    d.path = str(p)  # relative to the cwd of whoever read the file; workers run elsewhere


def _shape(d) -> tuple[int, ...]:
    """Every shard's footer read (schema, image shape, rows > 0), all of one shape."""
    try:
        shapes = {shard_info(p).shape for p in list_shards(d.path)}
    except ValueError as e:
        raise kinds.FieldError("path", str(e)) from None
    if len(shapes) > 1:
        raise kinds.FieldError("path", f"{d.path}: shards of different image shapes {sorted(shapes)}")
    return shapes.pop()


def _images(parts: list, words: list[str] | None = None, ids: list | None = None) -> kinds.ImageData:
    """Shards' (images, labels) as one ImageData; caption data (words, one ids array per shard): the labels are the
    caption ids and the label column, where there is one, each row's class."""
    x = torch.from_numpy(np.concatenate([a for a, _ in parts]).transpose(0, 3, 1, 2).copy())  # NHWC -> NCHW uint8
    labels = [b for _, b in parts]
    labels = torch.from_numpy(np.concatenate(labels)) if all(b is not None for b in labels) else None
    if words is None:
        return kinds.ImageData(x, labels)
    return kinds.ImageData(x, torch.from_numpy(np.concatenate(ids)), words, labels)


def _vocabulary(d) -> list[str] | None:
    """Caption data's vocabulary (its sorted distinct captions), or None for shards without a caption column."""
    shards = list_shards(d.path)
    return caption_vocabulary(shards) if shard_info(shards[0]).has_captions else None


def _load(d, first: int | None = None) -> kinds.ImageData:
    try:
        shards, words = list_shards(d.path)[:first], _vocabulary(d)
        ids = [caption_ids(p, words) for p in shards] if words else None
        return _images([read_shard(p) for p in shards], words, ids)
    except ValueError as e:
        raise kinds.FieldError("path", str(e)) from None


class ParquetOptions(kinds.Options):
    path: str | None = Field(
        None, description="folder of shard-*.parquet files (`multistep data convert`); relative to the cwd"
    )


PARQUET = kinds.register(
    kinds.DataKind(
        name="parquet",
        options=ParquetOptions,
        shape=_shape,
        load=_load,
        label=lambda d: f"parquet:{Path(d.path or '').name}",
        check=_check,
        stream=lambda d, rank, world, seed, batch_size: ShardStream(
            d.path, rank, world, seed, batch_size, captions=_vocabulary(d)
        ),
        captions=_vocabulary,
        first_rows=lambda d: _load(d, first=1),  # checks need a few rows, not the dataset
    )
)
