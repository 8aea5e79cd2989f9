"""atomic.py: a staged output folder appears whole or not at all, and a bad target is one line."""

import pytest

from multistep.atomic import staged_folder
from multistep.config import ConfigError


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
