"""`multistep data convert` (data/convert.py): CIFAR-10 batches, ImageNet .npz files and class folders -> Parquet shards;
imagefolder: captioned images (metadata.jsonl / captions.csv) -> Parquet shards with a caption column, read back by
read_captions and caption_vocabulary; bad input refused with one `FILE:LINE: why` line, exit 2."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle

import numpy as np
import pytest
from PIL import Image

from multistep.cli import main
from multistep.commands import data as data_command
from multistep.config import ConfigError
from multistep.data import manifest
from multistep.data.convert import convert
from multistep.data.parquet import (
    ShardStream,
    caption_vocabulary,
    list_shards,
    read_captions,
    read_shard,
    shard_info,
    write_shards,
)
from unit.data.test_parquet import _images

pytestmark = pytest.mark.usefixtures("one_thread_module")

PATTERN = np.array(  # a 3x4 RGB image with every byte distinct: PNG keeps it exactly
    [[[3 * (4 * r + c) + k for k in range(3)] for c in range(4)] for r in range(3)], np.uint8
)
UNICODE = "ein Straßenfuchs 🦊 über „Schnee“"


def _solid(path, mode, size, color):
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "P":
        im = Image.new("P", size, 0)
        im.putpalette(list(color) + [0] * 765)
    else:
        im = Image.new(mode, size, color)
    im.save(path)


def _convert(src, out, *opts):
    return main(["data", "convert", "imagefolder", str(src), str(out), *opts])


def _jsonl(rows) -> str:
    return "".join((json.dumps(r, ensure_ascii=False) if not isinstance(r, str) else r) + "\n" for r in rows)


def test_jsonl_folder_keeps_order_pixels_captions_and_labels(tmp_path, capsys):
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    Image.fromarray(PATTERN).save(src / "a.png")
    _solid(src / "sub" / "b.png", "L", (4, 3), 77)
    _solid(src / "c.png", "RGBA", (4, 3), (10, 20, 30, 40))
    _solid(src / "d.png", "P", (4, 3), (200, 100, 50))
    _solid(src / "unlisted.png", "RGB", (9, 9), (1, 2, 3))  # not in metadata.jsonl: ignored (its size differs)
    (src / "metadata.jsonl").write_text(
        _jsonl(
            [
                {"file_name": "c.png", "text": "a red fox", "label": 2},
                {"file_name": "a.png", "text": UNICODE, "label": 0},
                "",
                {"file_name": "sub/b.png", "text": "a red fox", "label": 1, "extra": "ignored"},
                {"file_name": "d.png", "text": "  palette  ", "label": 0},
            ]
        ),
        encoding="utf-8",
    )
    assert _convert(src, out, "--shard-size", "3") == 0
    assert f"wrote 4 images (3x4x3, labels, captions) in 2 shard(s) under {out}" in capsys.readouterr().out

    paths = list_shards(out)
    assert [p.name for p in paths] == ["shard-00000.parquet", "shard-00001.parquet"]
    info = shard_info(paths[0])
    assert (info.rows, info.height, info.width, info.channels) == (3, 3, 4, 3)
    assert (info.has_labels, info.has_captions, info.num_classes, info.class_names) == (True, True, 3, None)
    (x0, y0), (x1, y1) = read_shard(paths[0]), read_shard(paths[1])
    x, y = np.concatenate([x0, x1]), np.concatenate([y0, y1])
    want = np.stack(
        [
            np.full((3, 4, 3), (10, 20, 30), np.uint8),  # RGBA: alpha dropped
            PATTERN,
            np.full((3, 4, 3), 77, np.uint8),  # L: gray in every channel
            np.full((3, 4, 3), (200, 100, 50), np.uint8),  # P: the palette colour
        ]
    )
    np.testing.assert_array_equal(x, want)
    assert y.tolist() == [2, 0, 1, 0]
    assert read_captions(paths[0]) == ["a red fox", UNICODE, "a red fox"]
    assert read_captions(paths[1]) == ["  palette  "]
    assert caption_vocabulary(out) == ["  palette  ", "a red fox", UNICODE]
    assert caption_vocabulary([paths[1]]) == ["  palette  "]

    doc = json.loads((out / "manifest.json").read_text())
    assert [(e["file"], e["rows"]) for e in doc["shards"]] == [("shard-00000.parquet", 3), ("shard-00001.parquet", 1)]
    assert [e["sha256"] for e in doc["shards"]] == [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]
    assert manifest.verify(out).rows == 4
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "shard-00000.parquet", "shard-00001.parquet"]

    batches = list(ShardStream(out, batch_size=4).epoch_arrays(0))  # the stream reads captioned shards as before
    assert len(batches) == 1 and sorted(batches[0][1].tolist()) == [0, 0, 1, 2]


def test_captions_csv_resized_grayscale_no_labels(tmp_path, capsys):
    src, out = tmp_path / "src", tmp_path / "out"
    _solid(src / "r.png", "RGB", (5, 7), (255, 0, 0))
    _solid(src / "g.png", "RGB", (3, 3), (0, 255, 0))
    _solid(src / "b.jpg", "RGB", (8, 4), (0, 0, 255))
    (src / "captions.csv").write_text(
        'file_name,text\nr.png,"a cat, ""sitting""\non red"\ng.png,green\n\nb.jpg,blue\n', encoding="utf-8"
    )
    assert _convert(src, out) == 2  # three sizes and no --size
    assert capsys.readouterr().err == (
        f"multistep: error: {src}/captions.csv:4: image 'g.png' is 3x3 but 'r.png' (line 2) is 5x7 "
        "(use --size to resize)\n"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]  # no OUT, no staging folder left

    assert _convert(src, out, "--size", "2", "--grayscale", "--shard-size", "2") == 0
    assert "wrote 3 images (2x2x1, captions) in 2 shard(s)" in capsys.readouterr().out
    paths = list_shards(out)
    info = shard_info(paths[0])
    assert (info.has_labels, info.has_captions, info.num_classes) == (False, True, None)
    x = np.concatenate([read_shard(p)[0] for p in paths])
    assert read_shard(paths[0])[1] is None
    # luma of pure red, green, blue (ITU-R 601: 0.299, 0.587, 0.114 of 255); a solid image stays solid when resized
    np.testing.assert_array_equal(x, np.array([76, 150, 29], np.uint8)[:, None, None, None] * np.ones((3, 2, 2, 1)))
    assert [read_captions(p) for p in paths] == [['a cat, "sitting"\non red', "green"], ["blue"]]
    assert caption_vocabulary(out) == ['a cat, "sitting"\non red', "blue", "green"]


def test_csv_labels_and_shards_without_captions(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    for i in range(3):
        _solid(src / f"{i}.png", "RGB", (2, 2), (i, i, i))
    (src / "captions.csv").write_text("label,file_name,text\n4,2.png,two\n 0 ,0.png,zero\n1,1.png,two\n")
    assert _convert(src, out) == 0
    (p,) = list_shards(out)
    x, y = read_shard(p)
    assert x[:, 0, 0, 0].tolist() == [2, 0, 1] and y.tolist() == [4, 0, 1]
    assert shard_info(p).num_classes == 5
    assert read_captions(p) == ["two", "zero", "two"] and caption_vocabulary(out) == ["two", "zero"]

    plain = write_shards(np.zeros((2, 2, 2, 3), np.uint8), None, tmp_path / "plain", shard_size=5)
    assert shard_info(plain[0]).has_captions is False and read_captions(plain[0]) is None
    with pytest.raises(ValueError, match=r"shard-00000.parquet: no 'caption' column"):
        caption_vocabulary([p, plain[0]])


_OK = {"file_name": "ok.png", "text": "fine"}
# (name, {file: text or bytes} in SRC beside ok.png (RGB 2x2) and bad.png (not an image), the one line after
# "multistep: error: ", with {src} and {meta} for the folder and its metadata file)
BAD = [
    ("missing image", {"metadata.jsonl": _jsonl([_OK, {"file_name": "x.png", "text": "a"}])},
     "{meta}:2: image 'x.png' not found"),
    ("empty caption", {"metadata.jsonl": _jsonl([_OK, {"file_name": "bad.png", "text": ""}])},
     "{meta}:2: empty caption"),
    ("blank caption", {"metadata.jsonl": _jsonl(["", "", {"file_name": "ok.png", "text": " \t "}])},
     "{meta}:3: empty caption"),
    ("undecodable", {"metadata.jsonl": _jsonl([_OK, {"file_name": "bad.png", "text": "b"}])},
     "{meta}:2: cannot decode 'bad.png' (cannot identify image file '{src}/bad.png')"),
    ("not json", {"metadata.jsonl": _jsonl([_OK, "", '{"file_name": "ok.png", text}'])},
     "{meta}:3: not JSON (Expecting property name enclosed in double quotes at column 25)"),
    ("not an object", {"metadata.jsonl": _jsonl([["ok.png", "fine"]])}, "{meta}:1: not a JSON object (got list)"),
    ("missing file_name", {"metadata.jsonl": _jsonl([_OK, {"text": "a"}])}, "{meta}:2: missing file_name"),
    ("empty file_name", {"metadata.jsonl": _jsonl([_OK, {"file_name": "", "text": "a"}])}, "{meta}:2: missing file_name"),
    ("file_name a number", {"metadata.jsonl": _jsonl([{"file_name": 7, "text": "a"}])},
     "{meta}:1: file_name must be a string, got int"),
    ("duplicate", {"metadata.jsonl": _jsonl([_OK, {"file_name": "bad.png", "text": "b"}, {"file_name": "./ok.png", "text": "c"}])},
     "{meta}:3: duplicate file_name './ok.png' (also on line 1)"),
    ("outside", {"metadata.jsonl": _jsonl([{"file_name": "../src/ok.png", "text": "a"}, {"file_name": "../x.png", "text": "a"}])},
     "{meta}:2: image '../x.png' is outside {src}"),
    ("missing text", {"metadata.jsonl": _jsonl([{"file_name": "ok.png"}])}, "{meta}:1: missing text"),
    ("text a list", {"metadata.jsonl": _jsonl([{"file_name": "ok.png", "text": ["a", "b"]}])},
     "{meta}:1: text must be a string, got list"),
    ("negative label", {"metadata.jsonl": _jsonl([_OK | {"label": -1}])},
     "{meta}:1: label must be a non-negative integer, got -1"),
    ("string label", {"metadata.jsonl": _jsonl([_OK | {"label": "3"}])},
     "{meta}:1: label must be a non-negative integer, got '3'"),
    ("some labels", {"metadata.jsonl": _jsonl([_OK | {"label": 1}, {"file_name": "bad.png", "text": "b"}])},
     "{meta}:2: missing label (line 1 has one; give every row a label or none)"),
    ("late label", {"metadata.jsonl": _jsonl([_OK, {"file_name": "bad.png", "text": "b", "label": 0}])},
     "{meta}:2: label given, but line 1 has none (give every row a label or none)"),
    ("not utf-8", {"metadata.jsonl": _jsonl([_OK]).encode() + b'{"file_name": "bad.png", "text": "\xff"}\n'},
     "{meta}:2: not UTF-8 text"),
    ("empty jsonl", {"metadata.jsonl": "\n\n"}, "{meta}: no rows (one per image, with file_name and text)"),
    ("both files", {"metadata.jsonl": _jsonl([_OK]), "captions.csv": "file_name,text\nok.png,fine\n"},
     "{src}: has both metadata.jsonl and captions.csv; keep one of them"),
    ("neither file", {"metadata.csv": "file_name,text\nok.png,fine\n"},
     "{src}: imagefolder needs metadata.jsonl (one JSON object per line with file_name and text) "
     "or captions.csv (a header row file_name,text[,label]) in this folder"),
    ("csv header", {"captions.csv": "file_name,caption\nok.png,fine\n"},
     "{meta}:1: header needs columns file_name and text, got file_name,caption"),
    ("csv fields", {"captions.csv": "file_name,text\nok.png,fine\nbad.png,b,extra\n"},
     "{meta}:3: 3 fields, the header has 2"),
    ("csv label", {"captions.csv": "file_name,text,label\nok.png,fine,x\n"},
     "{meta}:2: label must be a non-negative integer, got 'x'"),
    ("csv lines", {"captions.csv": 'file_name,text\nok.png,"two\nlines"\n\nx.png,a\n'},
     "{meta}:5: image 'x.png' not found"),
    ("csv empty caption", {"captions.csv": "file_name,text\nok.png,\n"}, "{meta}:2: empty caption"),
]  # fmt: skip


@pytest.mark.parametrize("files, message", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_folder_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, files, message):
    src, out = tmp_path / "src", tmp_path / "out"
    _solid(src / "ok.png", "RGB", (2, 2), (9, 9, 9))
    (src / "bad.png").write_bytes(b"\x89PNG not really")
    for name, text in files.items():
        (src / name).write_bytes(text if isinstance(text, bytes) else text.encode())
    meta = next((src / n for n in ("metadata.jsonl", "captions.csv") if n in files), None)
    assert _convert(src, out) == 2
    err = capsys.readouterr().err
    assert err == f"multistep: error: {message.format(src=src, meta=meta)}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]  # no OUT, no staging folder left


def test_src_must_be_a_folder(tmp_path, capsys):
    assert _convert(tmp_path / "nowhere", tmp_path / "out") == 2
    assert capsys.readouterr().err == f"multistep: error: {tmp_path}/nowhere: not found (imagefolder needs a folder)\n"
    assert not (tmp_path / "out").exists()


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


def test_convert_whose_second_batch_is_corrupt_writes_nothing(tmp_path):
    src = tmp_path / "cifar"
    src.mkdir()
    rng = np.random.default_rng(0)
    with open(src / "data_batch_1", "wb") as f:
        data = rng.integers(0, 256, (6, 3 * 32 * 32), dtype=np.uint8)
        pickle.dump({b"data": data, b"labels": [0] * 6}, f, protocol=2)
    (src / "data_batch_2").write_bytes(b"\x80\x02garbage")
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match="data_batch_2"):
        convert("cifar10", src, out, shard_size=2)
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["cifar"]
    out.mkdir()  # an existing empty folder stays empty
    with pytest.raises(ConfigError, match="data_batch_2"):
        convert("cifar10", src, out, shard_size=2)
    assert list(out.iterdir()) == []
    with pytest.raises(ConfigError, match="--size must be >= 1, got -3"):
        convert("folder", src, tmp_path / "o2", size=-3)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ConfigError, match="OUT .*afile: exists and is not a folder"):
        convert("cifar10", src, tmp_path / "afile")
    with pytest.raises(ConfigError, match="OUT /proc/x: cannot write in /proc"):
        convert("cifar10", src, "/proc/x")
