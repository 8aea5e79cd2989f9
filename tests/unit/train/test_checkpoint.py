"""train/checkpoint.py: open_checkpoint names each of the platform's checkpoint formats, and refuses anything else
(a foreign pickle, a corrupt file, a missing one) with one line naming the file."""

import logging

import pytest
import torch

from multistep.config import ConfigError
from multistep.train import checkpoint


def test_each_format_is_named_and_anything_else_refused(tmp_path):
    checkpoint.save(tmp_path / "teacher.pt", {"format": checkpoint.TEACHER_FORMAT, "version": 1, "net": {}})
    checkpoint.save(tmp_path / "state.pt", {"format": checkpoint.TRIAL_FORMAT, "version": 1, "state": {"ema": {}}})
    checkpoint.save(tmp_path / "old.pt", {"version": 1, "state": {"ema": {}}})  # a trial's state.pt before the tag
    assert checkpoint.open_checkpoint(tmp_path / "teacher.pt").kind == "teacher"
    assert checkpoint.open_checkpoint(tmp_path / "state.pt").kind == "trial"
    assert checkpoint.open_checkpoint(tmp_path / "old.pt").kind == "trial"
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    data = (tmp_path / "state.pt").read_bytes()
    (tmp_path / "corrupt.pt").write_bytes(data[:100] + bytes([data[100] ^ 1]) + data[101:])
    cases = {
        "foreign.pt": "not a multistep teacher checkpoint",
        "corrupt.pt": "checksum mismatch",
        "none.pt": "not found",
    }
    for name, why in cases.items():
        with pytest.raises(ConfigError) as e:
            checkpoint.open_checkpoint(tmp_path / name)
        assert str(tmp_path / name) in str(e.value) and why in str(e.value) and "\n" not in str(e.value)


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
