"""train/checkpoint.py: open_checkpoint names each of the platform's checkpoint formats, and refuses anything else
(a foreign pickle, a corrupt file, a missing one) with one line naming the file."""

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
