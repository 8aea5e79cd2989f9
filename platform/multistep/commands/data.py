"""`multistep data convert`: its parser and its run (the conversion is data/convert.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from multistep.data import convert as impl


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Adds `data convert KIND SRC OUT [--shard-size N] [--size S] [--grayscale]` to the multistep CLI."""
    d = subparsers.add_parser("data", help="dataset tools (convert to Parquet shards)")
    dsub = d.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")
    c = dsub.add_parser(
        "convert",
        help="convert CIFAR-10 batches, ImageNet 32/64 .npz, an image folder or captioned images to Parquet shards",
        description=impl.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    c.add_argument("kind", choices=impl.KINDS, help="input format")
    c.add_argument("src", help="input file or folder (imagefolder: images + metadata.jsonl or captions.csv)")
    c.add_argument("out", help="output folder for shard-*.parquet (must hold no shards yet)")
    c.add_argument("--shard-size", type=int, default=10000, help="images per shard (default 10000)")
    c.add_argument("--size", type=int, default=None, help="folder, imagefolder: resize every image to SIZE x SIZE")
    c.add_argument("--grayscale", action="store_true", help="folder, imagefolder: decode as one channel")
    return d


def run(args) -> int:
    from multistep.data.parquet import shard_info

    paths = impl.convert(args.kind, args.src, args.out, args.shard_size, args.size, args.grayscale)
    info = shard_info(paths[0])
    rows = sum(shard_info(p).rows for p in paths)
    print(
        f"wrote {rows} images ({info.height}x{info.width}x{info.channels}"
        f"{', labels' if info.has_labels else ''}{', captions' if info.has_captions else ''}) in {len(paths)} "
        f"shard(s) under {Path(args.out)}, with manifest.json (each shard's sha256 and row count, checked before a "
        "sweep or teacher starts)"
    )
    return 0
