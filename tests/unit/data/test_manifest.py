"""The shards' manifest (data/manifest.py): written with the shards, and a garbled data page (footer intact) is found
by reading every byte, named by shard and row group, with or without the manifest."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import garble
from multistep.data.manifest import MANIFEST, verify
from multistep.data.parquet import read_shard, shard_info, write_shards


def _shards(folder, n=100, shard_size=50, row_group=20):
    rng = np.random.default_rng(0)
    return write_shards(
        rng.integers(0, 256, (n, 4, 4, 3), dtype=np.uint8), None, folder, shard_size, row_group=row_group
    )


def test_manifest_lists_every_shard_and_verifies(tmp_path):
    paths = _shards(tmp_path)
    doc = json.loads((tmp_path / MANIFEST).read_text())
    assert [e["file"] for e in doc["shards"]] == [p.name for p in paths] and [e["rows"] for e in doc["shards"]] == [
        50,
        50,
    ]
    assert pq.ParquetFile(paths[0]).num_row_groups == 3  # 20 + 20 + 10 rows
    done = verify(tmp_path)
    assert (done.shards, done.rows, done.against) == (2, 100, MANIFEST) and done.seconds >= 0
    assert "100 rows" in done.line("data.path x") and "manifest.json" in done.line("x")


@pytest.mark.parametrize("with_manifest", [True, False])
def test_a_garbled_page_is_named_by_shard_and_row_group(tmp_path, with_manifest):
    paths = _shards(tmp_path)
    garble(paths[1], row_group=1)
    shard_info(paths[1])  # the footer still reads: the shape check alone cannot see it
    if not with_manifest:
        (tmp_path / MANIFEST).unlink()
    with pytest.raises(ValueError) as e:
        verify(tmp_path)
    msg = str(e.value)
    assert msg.startswith(f"{paths[1]}: ") and "row group 1 of 3 (rows 20-39)" in msg, msg
    assert ("does not match manifest.json" in msg) == with_manifest
    assert verify(paths[0]).against == "decoding"  # the other shard is fine


def test_changed_bytes_that_still_decode_are_refused(tmp_path):
    """Rewritten without checksums and with one pixel changed: every page decodes, only the sha256 sees it."""
    paths = _shards(tmp_path)
    x, _ = read_shard(paths[0])
    x = x.copy()
    x[0, 0, 0, 0] ^= 1
    table = pq.read_table(paths[0]).set_column(0, "image", [[bytes(row) for row in x.reshape(len(x), -1)]])
    pq.write_table(table, paths[0])
    with pytest.raises(ValueError, match="every row group still decodes, so pixels or metadata changed"):
        verify(tmp_path)


@pytest.mark.parametrize(
    "case, match",
    [
        ("missing", "listed in .*manifest.json but missing"),
        ("extra", "not listed in"),
        ("bad-manifest", "not a multistep-shards manifest version 1"),
        ("rows", "does not match manifest.json .* 49 rows against 50"),
    ],
)
def test_manifest_mismatches_name_the_file(tmp_path, case, match):
    paths = _shards(tmp_path)
    if case == "missing":
        paths[1].unlink()
    elif case == "extra":
        _shards(tmp_path.parent / "other")
        (tmp_path.parent / "other" / "shard-00000.parquet").rename(tmp_path / "shard-00002.parquet")
    elif case == "bad-manifest":
        (tmp_path / MANIFEST).write_text("{")
    else:
        pq.write_table(pq.read_table(paths[0]).slice(1), paths[0])
    with pytest.raises(ValueError, match=match):
        verify(tmp_path)
