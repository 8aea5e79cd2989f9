"""Parquet shards (data/parquet.py): round trips, rank slices and epochs, resuming, the prefetch thread, and bad
shards named by file."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from multistep.data.parquet import (
    ShardStream,
    ShardWriter,
    list_shards,
    read_captions,
    read_shard,
    shard_info,
    write_shards,
)

pytestmark = pytest.mark.usefixtures("one_thread_module")


def _images(n=103, h=5, w=6, c=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, c), dtype=np.uint8)


def test_parquet_round_trip_rank_slices_and_epochs(tmp_path):
    x, y = _images(), np.arange(103) % 7
    paths = write_shards(x, y, tmp_path / "ds", shard_size=20)
    assert [p.name for p in paths] == [f"shard-{i:05d}.parquet" for i in range(6)]
    assert not list((tmp_path / "ds").glob(".*tmp"))  # atomic writes leave no temporaries
    info = shard_info(paths[0])
    assert (info.rows, info.height, info.width, info.channels, info.num_classes) == (20, 5, 6, 3, 7)
    back = [read_shard(p) for p in paths]
    assert np.array_equal(np.concatenate([b[0] for b in back]), x) and np.array_equal(
        np.concatenate([b[1] for b in back]), y
    )

    idx = np.arange(103)
    write_shards(x, idx, tmp_path / "ids", shard_size=20)  # labels = global row index
    for window in (1, 4):  # streamed piece by piece, and cached in memory
        seen = []
        for rank in range(2):
            s = ShardStream(tmp_path / "ids", rank, 2, seed=3, batch_size=8, drop_last=False, window=window)
            e0 = [b for b in s.epoch_batches(0)]
            xs, ys = torch.cat([b[0] for b in e0]), torch.cat([b[1] for b in e0])
            assert xs.shape[1:] == (3, 5, 6) and xs.dtype == torch.float32 and xs.min() >= -1 and xs.max() <= 1
            ref = torch.from_numpy(x[ys.numpy()].transpose(0, 3, 1, 2).astype(np.float32)) / 127.5 - 1
            assert torch.allclose(xs, ref, atol=1e-6)  # pixels travel with their labels
            ys1 = torch.cat([b[1] for b in s.epoch_batches(1)])
            assert sorted(ys1.tolist()) == sorted(ys.tolist()) and not torch.equal(ys1, ys)  # reshuffled per epoch
            again = torch.cat(
                [
                    b[1]
                    for b in ShardStream(
                        tmp_path / "ids", rank, 2, seed=3, batch_size=8, drop_last=False, window=window
                    ).epoch_batches(0)
                ]
            )
            assert torch.equal(again, ys)  # seeded
            assert s.rank_rows in (51, 52) and len(s.pieces) <= 4  # reads only the shards overlapping its slice
            seen.append(set(ys.tolist()))
        assert not (seen[0] & seen[1]) and seen[0] | seen[1] == set(range(103))  # disjoint, covering all

    s = ShardStream(tmp_path / "ids", 0, 1, batch_size=16)
    it = iter(s)
    assert all(next(it)[0].shape == (16, 3, 5, 6) for _ in range(20))  # endless, full batches across epochs

    gray = write_shards(_images(10, 4, 4, 1)[..., 0], None, tmp_path / "gray", shard_size=100)  # NHW, no labels
    xb, yb = next(iter(ShardStream(gray, batch_size=10)))
    assert xb.shape == (10, 1, 4, 4) and yb is None


def test_parquet_stream_resumes_at_a_batch_number(tmp_path):
    """ShardStream.batches(n) is the stream without its first n batches, across epochs (what a resumed trial reads)."""
    from itertools import islice

    x = _images()
    write_shards(x, np.arange(103), tmp_path / "ids", shard_size=20)  # labels = global row index
    for drop_last, window in ((True, 1), (True, 4), (False, 2)):
        s = ShardStream(tmp_path / "ids", 1, 2, seed=5, batch_size=8, drop_last=drop_last, window=window)
        assert s.batches_per_epoch == sum(1 for _ in s.epoch_batches(0)) == (6 if drop_last else 7)
        whole = [b for b in islice(s.batches(), 30)]
        for n in (0, 3, 6, 7, 13, 20):  # inside the first epoch, at and across epoch boundaries
            for prefetch, device in ((0, None), (2, "cpu")):  # read by a thread, converted "on the device": the same
                tail = [b for b in islice(s.batches(start=n, prefetch=prefetch, device=device), 30 - n)]
                assert len(tail) == 30 - n, (drop_last, window, n, prefetch)
                assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(tail, whole[n:])), (
                    drop_last,
                    window,
                    n,
                    prefetch,
                )


def test_prefetch_raises_the_readers_error_and_stops_when_dropped():
    import gc
    import threading
    from itertools import count

    from multistep.data.parquet import Prefetch

    def failing():
        yield from range(3)
        raise ValueError("shard-00007.parquet: not a readable Parquet file")

    got = Prefetch(failing(), 2)
    assert [next(got) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(ValueError, match="shard-00007"):
        next(got)
    with pytest.raises(StopIteration):  # failed: it ends, it does not wait for a reader that has stopped
        next(got)
    assert list(Prefetch(iter(range(5)), 1)) == list(range(5))  # a finite source ends the iteration

    before = set(threading.enumerate())
    endless = Prefetch(count(), 2)
    assert next(endless) == 0
    (reader,) = set(threading.enumerate()) - before
    closed = Prefetch(count(), 2)
    closed.close()
    assert list(closed) == []  # closed: ends at once
    del endless
    gc.collect()
    reader.join(timeout=10)
    assert not reader.is_alive()  # the consumer is gone: the thread stops instead of filling forever


def _write_table(path, images: pa.Array, meta: dict, labels: pa.Array | None = None):
    cols, names = [images], ["image"]
    if labels is not None:
        cols, names = cols + [labels], names + ["label"]
    t = pa.Table.from_arrays(cols, names=names)
    pq.write_table(t.replace_schema_metadata({k: str(v) for k, v in meta.items()}), path)
    return path


META = {"schema_version": "1", "height": 2, "width": 2, "channels": 3}


@pytest.mark.parametrize(
    "case,match",
    [
        ("missing", "not found"),
        ("not_parquet", "not a readable Parquet"),
        ("empty", "empty shard"),
        ("version", "schema_version '2'"),
        ("no_version", "schema_version None"),
        ("image_dtype", "must be binary"),
        ("label_dtype", "'label' must be int64"),
        ("image_shape", "expected 12"),
        ("mixed_shapes", "differs from"),
    ],
)
def test_bad_shards_name_the_file(tmp_path, case, match):
    good = write_shards(_images(4, 2, 2, 3), [0, 1, 0, 1], tmp_path / "good", shard_size=10)[0]
    bad = tmp_path / f"bad_{case}.parquet"
    item = [bytes(12)] * 3
    if case == "not_parquet":
        bad.write_bytes(b"PAR1 this is not parquet")
    elif case == "empty":
        _write_table(bad, pa.array([], pa.binary()), META)
    elif case == "version":
        _write_table(bad, pa.array(item, pa.binary()), {**META, "schema_version": "2"})
    elif case == "no_version":
        _write_table(bad, pa.array(item, pa.binary()), {k: v for k, v in META.items() if k != "schema_version"})
    elif case == "image_dtype":
        _write_table(bad, pa.array([1, 2, 3], pa.int64()), META)
    elif case == "label_dtype":
        _write_table(bad, pa.array(item, pa.binary()), META, pa.array(["a", "b", "c"]))
    elif case == "image_shape":
        _write_table(
            bad, pa.array([bytes(12), bytes(11), bytes(12)], pa.binary()), META, pa.array([0, 1, 2], pa.int64())
        )
    elif case == "mixed_shapes":
        _write_table(
            bad,
            pa.array([bytes(27)] * 3, pa.binary()),
            {**META, "height": 3, "width": 3},
            pa.array([0, 1, 2], pa.int64()),
        )
    with pytest.raises(ValueError, match=match) as e:
        for _ in ShardStream([good, bad], batch_size=1):
            pass
    assert bad.name in str(e.value)


def test_write_shards_rejects_bad_arrays(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        write_shards(np.zeros((3, 2, 2, 3), np.float32), None, tmp_path / "a", 2)
    with pytest.raises(ValueError, match="labels"):
        write_shards(np.zeros((3, 2, 2, 3), np.uint8), [0, 1], tmp_path / "b", 2)
    write_shards(np.zeros((3, 2, 2, 3), np.uint8), None, tmp_path / "c", 2)
    with pytest.raises(ValueError, match="already contains"):
        write_shards(np.zeros((3, 2, 2, 3), np.uint8), None, tmp_path / "c", 2)  # never mixes old and new shards
    with pytest.raises(ValueError, match="no shard"):
        list_shards(tmp_path / "a")


def test_writer_refuses_bad_captions_and_readers_bad_columns(tmp_path):
    w = ShardWriter(tmp_path / "w", 4, 1, 1, 1, labels=False, captions=True)
    with pytest.raises(ValueError, match="captions must be 2 strings, got 1 of type str"):
        w.add(np.zeros((2, 1, 1, 1), np.uint8), captions=["one"])
    with pytest.raises(ValueError, match="captions must be 1 strings, got 1 of type int"):
        w.add(np.zeros((1, 1, 1, 1), np.uint8), captions=[3])
    with pytest.raises(ValueError, match="captions must be 1 strings, got None"):
        w.add(np.zeros((1, 1, 1, 1), np.uint8))
    w.add(np.zeros((1, 1, 1, 1), np.uint8), captions=np.array(["kept"]))  # a failed add left nothing behind
    assert read_captions(w.close()[0]) == ["kept"]
    plain = ShardWriter(tmp_path / "p", 4, 1, 1, 1, labels=False)
    with pytest.raises(ValueError, match="captions given to a ShardWriter made without captions=True"):
        plain.add(np.zeros((1, 1, 1, 1), np.uint8), captions=["x"])

    meta = {b"schema_version": b"1", b"height": b"1", b"width": b"1", b"channels": b"1"}
    for name, col, match in (
        ("ints", pa.array([1, 2], pa.int64()), "column 'caption' must be string, got int64"),
        ("nulls", pa.array(["a", None], pa.string()), "row 1: null caption"),
    ):
        table = pa.table({"image": pa.array([b"\0", b"\1"]), "caption": col}).replace_schema_metadata(meta)
        pq.write_table(table, tmp_path / f"{name}.parquet")
        with pytest.raises(ValueError, match=match):
            read_captions(tmp_path / f"{name}.parquet")
