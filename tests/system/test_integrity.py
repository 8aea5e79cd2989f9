"""Files that carry their own integrity and outputs that appear whole (docs/reliability.md): checksummed
checkpoints (train/checkpoint.py), the fall-back to an earlier checkpoint, caches that heal, staged output folders."""

import logging
import pickle
import re

import numpy as np
import pytest
import torch

from multistep.atomic import staged_folder
from multistep.config import ConfigError
from multistep.data.convert import convert
from multistep.train import checkpoint


def _flip(path, offset=200, n=64):
    data = bytearray(path.read_bytes())
    for i in range(offset, offset + n):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def test_checkpoint_round_trip_and_corruption(tmp_path):
    payload = {"version": 1, "state": {"w": torch.arange(1000.0)}, "note": "x"}
    p = checkpoint.save(tmp_path / "state.pt", payload)
    got = checkpoint.load(p)
    assert torch.equal(got["state"]["w"], payload["state"]["w"]) and got["note"] == "x"
    assert not list(tmp_path.glob(".*tmp*"))  # nothing half-written left beside it
    _flip(p)  # 64 bytes flipped inside the payload
    with pytest.raises(checkpoint.CorruptCheckpoint, match=r"state.pt is corrupt: checksum mismatch"):
        checkpoint.load(p)
    checkpoint.save(p, payload)
    p.write_bytes(p.read_bytes()[:5000])  # truncated: the trailer is gone, the zip is broken
    with pytest.raises(checkpoint.CorruptCheckpoint, match="not a readable checkpoint"):
        checkpoint.load(p)
    legacy = tmp_path / "legacy.pt"
    torch.save(payload, legacy)  # written before checksums existed: still loads
    assert checkpoint.load(legacy)["note"] == "x"


def test_resume_falls_back_to_the_previous_checkpoint(tmp_path):
    """A trial folder as Tune keeps it (num_to_keep = 2): the latest state.pt corrupt -> the earlier one, with a note."""
    from ray.train import Checkpoint

    from multistep.sweep.worker import CKPT_FILE, load_checkpoint

    trial = tmp_path / "trial-000"
    for i in (1, 2):
        (trial / f"checkpoint_00000{i}").mkdir(parents=True)
        checkpoint.save(trial / f"checkpoint_00000{i}" / CKPT_FILE, {"version": 1, "iteration": 100 * i})
    latest = Checkpoint.from_directory(str(trial / "checkpoint_000002"))
    assert load_checkpoint(latest) == ({"version": 1, "iteration": 200}, None)
    _flip(trial / "checkpoint_000002" / CKPT_FILE)
    sd, note = load_checkpoint(latest)
    assert sd["iteration"] == 100
    assert "checksum mismatch" in note and "resumed from the earlier checkpoint_000001" in note
    _flip(trial / "checkpoint_000001" / CKPT_FILE)
    with pytest.raises(checkpoint.CorruptCheckpoint, match="checkpoint_000002.*checksum mismatch"):
        load_checkpoint(latest)  # no sound checkpoint left: the trial fails, naming the latest


def test_a_cache_file_that_fails_to_load_is_recomputed(tmp_path, caplog):
    from multistep.train.checkpoint import cached

    calls = []
    caplog.set_level(logging.INFO, logger="multistep")

    def compute():
        calls.append(1)
        return {"x": torch.ones(3) * len(calls)}

    path = tmp_path / "evalref-abc.pt"
    assert cached(path, compute)["x"].sum() == 3
    assert cached(path, compute)["x"].sum() == 3 and len(calls) == 1  # served from the cache
    path.write_bytes(path.read_bytes()[:50])  # truncated, as by a full disk or a kill
    assert cached(path, compute)["x"].sum() == 6 and len(calls) == 2
    notes = caplog.messages
    assert len(notes) == 1 and "evalref-abc.pt" in notes[0] and "recomputing" in notes[0]
    assert checkpoint.load(path)["x"].sum() == 6  # the healed file is sound again


def test_staged_folder_leaves_the_target_as_it_was_on_failure(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with staged_folder(target) as tmp:
            (tmp / "results.csv").write_text("partial")
            raise RuntimeError("late failure")
    assert not target.exists() and list(tmp_path.iterdir()) == []
    with staged_folder(target) as tmp:
        (tmp / "a.txt").write_text("1")
    assert (target / "a.txt").read_text() == "1"
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ConfigError, match="afile: exists and is not a folder"):
        with staged_folder(tmp_path / "afile", "--out"):
            pass
    with pytest.raises(ConfigError, match="/proc/x: cannot write in /proc"):
        with staged_folder("/proc/x", "--out"):
            pass


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


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 2 MiB tmpfs the test mounts (root only; skipped where mounting is not allowed), nearly filled."""
    import subprocess

    mnt = tmp_path / "full"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    (mnt / "filler").write_bytes(b"\0" * 1900 * 1024)  # ~150 KiB left: full at the first checkpoint
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


@pytest.mark.slow
def test_storage_that_fills_up_fails_the_sweep_in_one_line(ray_local, tiny_sweep, tmp_path, small_tmpfs, capsys):
    from mlflow.tracking import MlflowClient

    from multistep.cli import main

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    rc = main(["sweep", str(tiny_sweep), "--tracking-uri", uri, "--storage", str(small_tmpfs / "rr")])
    out = capsys.readouterr()
    r = type("R", (), {"returncode": rc, "stdout": out.out, "stderr": out.err})
    (line,) = [ln for ln in r.stderr.splitlines() if ln.startswith("multistep: error:")]
    storage = str(small_tmpfs / "rr")
    assert r.returncode == 1 and "Traceback" not in r.stderr + r.stdout, r.stderr[-3000:]
    # one line: the storage folder, what did not fit and its size, the free space there
    assert re.fullmatch(
        rf"multistep: error: {re.escape(storage)}/tiny-[0-9-]+: no space left for a trial checkpoint of [0-9.]+ MiB; "
        r"0\.[0-9]+ MiB free there \(Tune keeps the last 2 of each trial\); 2 of 2 trial\(s\) failed on it",
        line,
    ), line
    assert "FAILED: OSError: [Errno 28]" in r.stdout and "errored after" not in r.stdout  # no Tune boxes
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    assert sorted(x.info.status for x in runs) == ["FAILED", "FAILED", "FAILED"]  # the sweep and both trials
    trials = [x for x in runs if x.data.tags["multistep.kind"] == "trial"]
    assert len(trials) == 2 and all(
        "no space left for a trial checkpoint" in x.data.tags["multistep.error"] for x in trials
    )
