"""Data (toy 2-D, digits, Parquet shards, converters), the UNet, and teacher training/checkpoints."""

from __future__ import annotations

import argparse
import os
import pickle
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from multistep.commands import data as data_command
from multistep.config import ConfigError
from multistep.data import toy2d
from multistep.data.convert import convert
from multistep.data.digits import batches, load_digits
from multistep.data.parquet import ShardStream, list_shards, read_shard, shard_info, write_shards
from multistep.diffusion.samplers import ddim_sample
from multistep.diffusion.schedules import make_schedule
from multistep.metrics.frechet import frechet_distance, gaussian_stats
from multistep.nets.mlp import VDenoiser
from multistep.nets.unet import UNet
from multistep.train.teacher import load_teacher, save_teacher, train_teacher


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny convs on a shared 2-core box: intra-op threads only add spin-wait (10x slower under load)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# -- UNet -----------------------------------------------------------------------------------------
UNET_CASES = [  # (kwargs, exact parameter count) from tiny to small
    (dict(base_ch=4, ch_mult=(1,), time_dim=8), 2777),
    (dict(base_ch=4, ch_mult=(1, 1), time_dim=8), 4589),
    (dict(base_ch=8, ch_mult=(1, 2), time_dim=16), 40745),
    (dict(base_ch=8, ch_mult=(1, 2), time_dim=16, num_classes=10), 40745 + 11 * 32),
    (dict(base_ch=8, ch_mult=(1, 2), time_dim=16, attn_resolutions=(4,)), None),
    (
        dict(
            base_ch=8,
            ch_mult=(1, 2, 2),
            num_res_blocks=2,
            attn_resolutions=(8, 4),
            resolution=16,
            in_ch=3,
            num_classes=10,
            dropout=0.1,
        ),
        None,
    ),
]


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _randomise(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():  # undo the zero init so outputs depend on every input
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return net.eval()


@pytest.mark.parametrize("kw,count", UNET_CASES)
def test_unet_shapes_counts_conditioning_channels_last(kw, count):
    torch.manual_seed(0)
    net = UNet(**kw)
    if count is not None:
        assert n_params(net) == count
    res, c = kw.get("resolution", 8), kw.get("in_ch", 1)
    z, t = torch.randn(5, c, res, res), torch.rand(5)
    assert torch.equal(net(z, t), torch.zeros_like(z))  # zero-initialised output layer: v = 0 at init
    _randomise(net)
    v = net(z, t)
    assert v.shape == z.shape and v.dtype == torch.float32 and torch.isfinite(v).all()
    assert not torch.allclose(v, net(z, (t + 0.3) % 1))  # depends on t
    net_cl = net.to(memory_format=torch.channels_last)
    assert torch.allclose(net_cl(z.to(memory_format=torch.channels_last), t), v, atol=1e-5)
    if kw.get("num_classes"):
        y = torch.arange(5) % 10
        assert not torch.allclose(net(z, t, y), net(z, t, (y + 1) % 10))  # depends on the label
        assert torch.equal(net(z, t), net(z, t, torch.full((5,), net.null_class)))  # y=None is the null class


def test_unet_sizes_attention_and_conditioning_parameters():
    base = dict(base_ch=8, ch_mult=(1, 2), time_dim=16)
    plain, attn = UNet(**base), UNet(**base, attn_resolutions=(4,))
    # attention at 4x4 (16 channels): 1 down + 2 up blocks + middle, each GN(32) + qkv(16*48+48) + proj(16*16+16)
    assert n_params(attn) - n_params(plain) == 4 * (32 + 16 * 48 + 48 + 16 * 16 + 16)
    assert n_params(UNet(**base, attn_resolutions=(2,))) == n_params(plain)  # a resolution never reached adds nothing
    assert 2000 < n_params(UNet(base_ch=4, ch_mult=(1,), time_dim=8)) < 5000  # a few thousand parameters on 8x8
    with pytest.raises(ValueError, match="not divisible"):
        UNet(resolution=6, ch_mult=(1, 2, 2))


# -- toy 2-D and digits ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(toy2d.SAMPLERS))
def test_toy_samplers_seeded_shapes(name):
    a, b, c = toy2d.sample(name, 4000, 0), toy2d.sample(name, 4000, 0), toy2d.sample(name, 4000, 1)
    assert a.shape == (4000, 2) and a.dtype == np.float32
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert np.abs(a).max() < 3 and np.abs(a.mean(0)).max() < 0.15  # centred, in about [-2, 2]^2
    if name == "checkerboard":
        cells = np.floor(a).astype(int)
        assert ((cells[:, 0] + cells[:, 1]) % 2 == 0).all() and len({tuple(r) for r in cells}) == 8
    if name == "eight_gaussians":
        k = np.round(np.arctan2(a[:, 1], a[:, 0]) / (2 * np.pi / 8)) % 8
        centres = 2.0 * np.stack([np.cos(2 * np.pi * k / 8), np.sin(2 * np.pi * k / 8)], 1)
        assert np.abs(a - centres).max() < 0.6 and len(set(k)) == 8
    if name == "two_moons":
        assert np.percentile(np.linalg.norm(a, axis=1), 5) > 0.2  # a hole in the middle, unlike a Gaussian blob
    with pytest.raises(ValueError, match="unknown toy"):
        toy2d.sample("spiral", 3)


def test_digits_range_shape_and_upsampling():
    x, y = load_digits()
    assert x.shape == (1797, 1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.min() == -1 and x.max() == 1 and set(y.tolist()) == set(range(10))
    x16, _ = load_digits(16, "nearest")
    assert x16.shape == (1797, 1, 16, 16) and torch.equal(x16[:, :, ::2, ::2], x)
    x32, _ = load_digits(32, "bilinear")
    assert x32.shape == (1797, 1, 32, 32) and x32.min() >= -1 and x32.max() <= 1
    assert abs(float(x32.mean() - x.mean())) < 0.02
    xb, yb = next(batches(x, y, 100, seed=0))
    assert xb.shape == (100, 1, 8, 8) and yb.shape == (100,)
    with pytest.raises(ValueError):
        load_digits(12)


# -- Parquet shards -------------------------------------------------------------------------------
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


# -- converters -----------------------------------------------------------------------------------
def _planes(x_hwc):
    return x_hwc.transpose(0, 3, 1, 2).reshape(len(x_hwc), -1)  # CIFAR / ImageNet-npz row layout


def _read_all(out):
    parts = [read_shard(p) for p in list_shards(out)]
    return np.concatenate([p[0] for p in parts]), (
        np.concatenate([p[1] for p in parts]) if parts[0][1] is not None else None
    )


def test_convert_cifar10_batches(tmp_path, capsys):
    src = tmp_path / "cifar-10-batches-py"
    src.mkdir()
    xs, ys = [], []
    for k, n in ((1, 7), (2, 5)):
        x, y = _images(n, 32, 32, 3, seed=k), list(np.arange(n) % 10)
        with open(src / f"data_batch_{k}", "wb") as f:  # protocol 2 and bytes keys, as the real files
            pickle.dump(
                {
                    b"batch_label": b"training batch",
                    b"labels": [int(v) for v in y],
                    b"data": _planes(x),
                    b"filenames": [b"f.png"] * n,
                },
                f,
                protocol=2,
            )
        xs.append(x), ys.append(y)
    (src / "test_batch").write_bytes(b"not read")
    ns = argparse.ArgumentParser()
    data_command.add_parser(ns.add_subparsers(dest="command"))
    args = ns.parse_args(["data", "convert", "cifar10", str(src), str(tmp_path / "out"), "--shard-size", "4"])
    assert data_command.run(args) == 0
    assert "wrote 12 images (32x32x3, labels) in 3 shard(s)" in capsys.readouterr().out
    x, y = _read_all(tmp_path / "out")
    assert np.array_equal(x, np.concatenate(xs)) and np.array_equal(y, np.concatenate(ys))
    assert shard_info(list_shards(tmp_path / "out")[0]).num_classes == 10
    from multistep.data.manifest import verify

    done = verify(tmp_path / "out")  # the manifest moved with the shards out of the staging folder
    assert (done.shards, done.rows, done.against) == (3, 12, "manifest.json")

    class Evil:  # a pickle that would run code on load
        def __reduce__(self):
            return (os.system, ("touch pwned",))

    evil = tmp_path / "evil" / "data_batch_1"
    evil.parent.mkdir()
    evil.write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}))
    with pytest.raises(ConfigError, match="refusing to load global") as e:
        convert("cifar10", evil.parent, tmp_path / "o2")
    assert str(evil) in str(e.value) and not (tmp_path / "pwned").exists() and not os.path.exists("pwned")
    bad = tmp_path / "bad" / "data_batch_1"
    bad.parent.mkdir()
    bad.write_bytes(pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}))
    with pytest.raises(ConfigError, match=r"shape \(2, 100\)") as e:
        convert("cifar10", bad.parent, tmp_path / "o3")
    assert str(bad) in str(e.value)
    with pytest.raises(ConfigError, match="not found"):
        convert("cifar10", tmp_path / "nowhere", tmp_path / "o4")


def test_convert_imagenet_npz(tmp_path):
    src = tmp_path / "imagenet32"
    src.mkdir()
    xs, ys = [], []
    for k in (1, 2):
        x, y = _images(6, 32, 32, 3, seed=10 + k), np.array([1, 1000, 5, 7, 2, 3 + k])
        np.savez(src / f"train_data_batch_{k}.npz", data=_planes(x), labels=y, mean=np.zeros(3072))
        xs.append(x), ys.append(y - 1)
    paths = convert("imagenet", src, tmp_path / "out", shard_size=5)
    assert len(paths) == 3
    x, y = _read_all(tmp_path / "out")
    assert np.array_equal(x, np.concatenate(xs)) and np.array_equal(y, np.concatenate(ys))  # labels 1..1000 -> 0..999

    cases = {
        "float_data": dict(data=np.zeros((2, 3072), np.float32), labels=np.array([1, 2])),
        "object_array": dict(data=np.array([object(), object()], dtype=object), labels=np.array([1, 2])),
        "zero_label": dict(data=np.zeros((2, 3072), np.uint8), labels=np.array([0, 2])),
        "no_labels": dict(data=np.zeros((2, 3072), np.uint8)),
        "odd_size": dict(data=np.zeros((2, 3 * 16 * 16), np.uint8), labels=np.array([1, 2])),
    }
    for name, arrays in cases.items():
        f = tmp_path / f"{name}.npz"
        np.savez(f, **arrays)
        with pytest.raises(ConfigError) as e:
            convert("imagenet", f, tmp_path / f"out_{name}")
        assert str(f) in str(e.value) and "\n" not in str(e.value), name


def test_convert_image_folder(tmp_path):
    src = tmp_path / "imgs"
    pngs = {}
    for cls, n, ext in (("cat", 3, ".png"), ("dog", 2, ".jpg")):
        (src / cls).mkdir(parents=True)
        for i in range(n):
            a = _images(1, 6, 5, 3, seed=10 * len(cls) * n + i)[0]
            Image.fromarray(a).save(src / cls / f"{i}{ext}")
            if ext == ".png":
                pngs[a.tobytes()] = 0
    (src / "dog" / "notes.txt").write_text("ignored")
    paths = convert("folder", src, tmp_path / "out", shard_size=2)
    assert len(paths) == 3
    info = shard_info(paths[0])
    assert (info.height, info.width, info.channels, info.num_classes, info.class_names) == (6, 5, 3, 2, ["cat", "dog"])
    x, y = _read_all(tmp_path / "out")
    assert x.shape == (5, 6, 5, 3) and sorted(y.tolist()) == [0, 0, 0, 1, 1]
    assert {r.tobytes() for r, k in zip(x, y) if k == 0} == set(pngs)  # PNG pixels survive exactly
    x8, _ = _read_all(convert("folder", src, tmp_path / "out8", shard_size=10, size=8, grayscale=True))
    assert x8.shape == (5, 8, 8, 1)

    Image.fromarray(_images(1, 7, 7, 3)[0]).save(src / "cat" / "big.png")  # a different size
    with pytest.raises(ConfigError, match="--size") as e:
        convert("folder", src, tmp_path / "o2")
    assert "big.png" in str(e.value)
    (src / "cat" / "big.png").unlink()
    (src / "dog" / "broken.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(ConfigError, match="cannot decode") as e:
        convert("folder", src, tmp_path / "o3")
    assert "broken.png" in str(e.value)
    with pytest.raises(ConfigError, match="already contains"):
        convert("folder", src, tmp_path / "out")


# -- teacher ----------------------------------------------------------------------------------------
STEPS = (1, 2, 4, 8, 16, 64)
TINY = dict(
    kind="unet", in_ch=1, base_ch=8, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(), resolution=8, time_dim=32
)


@pytest.fixture(scope="module")
def digits_teacher():
    x, _ = load_digits()
    sched = make_schedule("cosine")
    cfg = dict(TINY)
    net = UNet(**{k: v for k, v in cfg.items() if k != "kind"})
    t0 = time.perf_counter()
    net, ema, hist = train_teacher(
        net, sched, batches(x, None, 128, seed=0), iterations=300, lr=3e-3, ema=0.99, seed=0, log_every=100
    )
    return cfg, net, ema, hist, time.perf_counter() - t0, sched, x


def test_digits_teacher_curve_falls_with_steps(digits_teacher):
    cfg, net, ema, hist, seconds, sched, x = digits_teacher
    assert len(hist) == 3 and hist[-1]["loss"] < hist[0]["loss"]
    f = VDenoiser(ema, sched)
    mu, cov = gaussian_stats(x.reshape(len(x), -1).numpy())
    noise = torch.randn(500, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    fd = {}
    for n in STEPS:
        s, nfe = ddim_sample(f, sched, noise, n)
        assert nfe == n and s.shape == noise.shape
        fd[n] = frechet_distance(*gaussian_stats(s.reshape(len(s), -1).numpy()), mu, cov)
    print(
        f"\ndigits teacher ({sum(p.numel() for p in ema.parameters())} params, 300 it, {seconds:.1f} s): "
        + ", ".join(f"FD@{n}={v:.2f}" for n, v in fd.items())
    )
    assert all(np.isfinite(list(fd.values())))
    assert fd[2] < fd[1] and fd[4] < fd[2] and fd[16] < fd[1] / 3 and fd[64] < fd[1] / 3


def test_teacher_checkpoint_round_trip_and_bad_files(digits_teacher, tmp_path):
    cfg, _, ema, _, _, sched, _ = digits_teacher
    p = save_teacher(
        tmp_path / "t" / "teacher.pt", cfg, ema.state_dict(), meta={"schedule": "cosine", "data": "digits"}
    )
    assert not list(p.parent.glob(".*tmp"))
    net, info = load_teacher(p)
    z, t = torch.randn(4, 1, 8, 8), torch.rand(4)
    assert torch.equal(net(z, t), ema(z, t)) and info["meta"]["data"] == "digits" and info["net"]["base_ch"] == 8
    assert not any(q.requires_grad for q in net.parameters()) and not net.training

    truncated = tmp_path / "trunc.pt"
    truncated.write_bytes(p.read_bytes()[:200])
    other = save_teacher(
        tmp_path / "other.pt", {**cfg, "base_ch": 4}, ema.state_dict()
    )  # weights do not fit the config
    blob = torch.load(p, weights_only=True)
    newer = tmp_path / "v9.pt"
    torch.save({**blob, "version": 9}, newer)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": blob["state"]}, foreign)
    for f, match in (
        (truncated, "not a readable"),
        (other, "incompatible"),
        (newer, "version 9"),
        (foreign, "not a multistep teacher"),
        (tmp_path / "missing.pt", "not found"),
    ):
        with pytest.raises(ValueError, match=match) as e:
            load_teacher(f)
        assert f.name in str(e.value)


def test_conditional_teacher_trains_label_embedding():
    x, y = load_digits()
    net = UNet(1, 4, (1,), 1, (), 8, 0.0, num_classes=10, time_dim=8)
    before = net.label_emb.weight.detach().clone()
    logged = []
    net, ema, hist = train_teacher(
        net,
        make_schedule("cosine"),
        batches(x, y, 32, seed=1),
        iterations=20,
        lr=1e-3,
        seed=0,
        log=lambda it, m: logged.append(it),
        label_dropout=0.5,
        log_every=10,
    )
    assert logged == [10, 20] and all(np.isfinite(h["loss"]) for h in hist)
    changed = (net.label_emb.weight - before).abs().sum(1) > 0
    assert changed[:10].any() and changed[10]  # real classes and the null class (CFG dropout) both learn
    assert not torch.equal(ema.label_emb.weight, net.label_emb.weight)  # EMA lags the online weights


# -- Gaussian mixtures (data/gmm.py) ----------------------------------------------------------------
def test_gmm_random_unchanged_without_factors():
    """rank 0 draws exactly the mixtures of earlier releases (means ~ N(0, mean_std^2) from the seed)."""
    from multistep.data.gmm import GaussianMixture

    m = GaussianMixture.random((16,), 10, 0.6, 0.1, seed=0)
    ref = torch.randn(10, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 0.6
    assert m.rank == 0 and torch.equal(m.means, ref) and m.factors.shape == (10, 16, 0)


def test_gmm_correlated_components_have_their_covariance():
    """Samples of one component have Sigma_k = s^2 I + Q diag(lambda) Q^T; image fields are smooth."""
    from multistep.data.gmm import GaussianMixture

    m = GaussianMixture.random((3, 8, 8), 1, 0.6, 0.1, seed=3, rank=4, rank_std=0.5, smooth=4)
    Q = m.factors[0]
    torch.testing.assert_close(Q.T @ Q, torch.eye(4, dtype=torch.float64), atol=1e-12, rtol=0)
    x = m.sample(40_000, torch.Generator().manual_seed(1), dtype=torch.float64).reshape(40_000, -1)
    cov = torch.cov(x.T)
    sigma = 0.01 * torch.eye(192, dtype=torch.float64) + 0.25 * Q @ Q.T
    assert (cov - sigma).abs().max() < 0.02  # sampling error of 40k draws: ~ 0.3 / sqrt(40k) * 3
    # bilinear upsampling from 2x2: neighbouring pixels of a direction are strongly correlated
    f = Q.T.reshape(4, 3, 8, 8)
    nb = torch.corrcoef(torch.stack([f[..., :, :-1].flatten(), f[..., :, 1:].flatten()]))[0, 1]
    assert nb > 0.8
    with pytest.raises(ValueError, match="rank 200 exceeds the dimension 192"):
        GaussianMixture.random((3, 8, 8), 1, rank=200)
