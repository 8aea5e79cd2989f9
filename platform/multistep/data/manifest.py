"""The manifest beside a folder of Parquet shards: each shard's row count and sha256, written when the shards are.

A shard whose data pages were garbled after it was written (a bad copy, a flaky disk) keeps a valid footer, so
reading footers (the shape check) does not see it; only reading every byte does. `verify` reads every byte of a
folder before anything starts: against `manifest.json` when the folder has one (sha256 and row count per shard),
else by decoding every row group. A mismatch names the shard and the first row group that does not decode
(shards are written with page checksums, so a garbled page fails its CRC even where it would still decompress).

manifest.json: {"format": "multistep-shards", "version": 1,
                "shards": [{"file": "shard-00000.parquet", "rows": 1000, "bytes": 123456, "sha256": "..."}]}
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

MANIFEST = "manifest.json"
FORMAT, VERSION = "multistep-shards", 1


def sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def entry(path: Path) -> dict:
    """One shard's manifest entry (its footer gives the row count)."""
    return {
        "file": path.name,
        "rows": pq.ParquetFile(path).metadata.num_rows,
        "bytes": path.stat().st_size,
        "sha256": sha256(path),
    }


def write_manifest(folder: Path, entries: list[dict]) -> Path:
    from multistep.atomic import write_text

    return write_text(
        Path(folder) / MANIFEST, json.dumps({"format": FORMAT, "version": VERSION, "shards": entries}, indent=1)
    )


@dataclass(frozen=True)
class Verified:
    shards: int
    rows: int
    bytes: int
    seconds: float
    against: str  # "manifest.json" or "decoding" (a folder without a manifest)

    def line(self, where: str) -> str:
        how = "sha256 and row counts match manifest.json" if self.against == MANIFEST else "every row group decodes"
        return (
            f"{where}: {self.shards} shard(s), {self.rows:,} rows, {self.bytes / 2**20:.1f} MiB read: {how} "
            f"({self.seconds:.1f} s; --skip-data-check skips this)"
        )


def bad_row_group(path: Path) -> str | None:
    """'row group K of N (rows a-b): why' for the first row group of `path` that does not decode, else None."""
    try:
        f = pq.ParquetFile(path, page_checksum_verification=True)
    except Exception as e:  # ArrowInvalid / OSError alike
        return f"footer unreadable ({_first_line(e)})"
    start = 0
    for i in range(f.num_row_groups):
        n = f.metadata.row_group(i).num_rows
        try:
            f.read_row_group(i)
        except Exception as e:  # a CRC mismatch, a decompression error, a bad encoding
            return f"row group {i} of {f.num_row_groups} (rows {start}-{start + n - 1}): {_first_line(e)}"
        start += n
    return None


def verify(src) -> Verified:
    """Read every byte of the shards of `src` (a folder, a shard or a list of shards, as `data.path` takes them);
    a problem raises ValueError naming the shard. Only a folder has a manifest."""
    from multistep.data.parquet import list_shards

    t0, paths = time.perf_counter(), list_shards(src)
    folder = Path(src) if isinstance(src, (str, Path)) and Path(src).is_dir() else None
    manifest = folder / MANIFEST if folder else None
    if manifest is None or not manifest.is_file():
        for p in paths:
            if why := bad_row_group(p):
                raise ValueError(f"{p}: {why}")
        rows = sum(pq.ParquetFile(p).metadata.num_rows for p in paths)
        return Verified(len(paths), rows, sum(p.stat().st_size for p in paths), time.perf_counter() - t0, "decoding")
    try:
        doc = json.loads(manifest.read_text())
        listed = {e["file"]: e for e in doc["shards"]}
        assert doc.get("format") == FORMAT and doc.get("version") == VERSION
    except (ValueError, KeyError, TypeError, AssertionError):
        raise ValueError(f"{manifest}: not a {FORMAT} manifest version {VERSION}") from None
    for p in paths:
        if p.name not in listed:
            raise ValueError(f"{p}: not listed in {manifest} (a shard added by hand? remove it or convert again)")
    for name in listed.keys() - {p.name for p in paths}:
        raise ValueError(f"{folder / name}: listed in {manifest} but missing")
    rows = 0
    for p in paths:
        want = listed[p.name]
        try:
            got = entry(p)
        except Exception as e:  # a garbled footer
            raise ValueError(f"{p}: not a readable Parquet file ({_first_line(e)})") from None
        if got["sha256"] != want["sha256"] or got["rows"] != want["rows"]:
            where = bad_row_group(p) or "every row group still decodes, so pixels or metadata changed"
            raise ValueError(
                f"{p}: does not match {MANIFEST} (sha256 {got['sha256'][:12]}... against {want['sha256'][:12]}..., "
                f"{got['rows']} rows against {want['rows']}): {where}"
            )
        rows += got["rows"]
    return Verified(len(paths), rows, sum(p.stat().st_size for p in paths), time.perf_counter() - t0, MANIFEST)


def _first_line(e: Exception) -> str:
    from multistep.config.errors import first_line

    return f"{type(e).__name__}: {first_line(e, 200)}"
