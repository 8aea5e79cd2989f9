"""sweep/worker.py: a trial resumes from its newest sound checkpoint (the whole trial on Ray: tests/system/)."""

import pytest

from multistep.train import checkpoint
from unit.train.test_checkpoint import _flip


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
