"""config/teacher_file.py: `multistep teacher` files, their one-line errors (exit 2) and a valid file's dry run."""

import pytest
import yaml

from multistep.cli import main
from multistep.config import load_teacher_file

pytestmark = pytest.mark.usefixtures("one_thread_module")


TEACHER = {
    "name": "tiny-teacher",
    "experiment": "teachers",
    "data": {"kind": "digits"},
    "net": {"kind": "unet", "base_ch": 4, "ch_mult": [1], "time_dim": 8},  # 2,777 parameters
    "train": {"iterations": 50, "batch_size": 32, "learning_rate": 2e-3, "log_every": 10},
    "eval": {"samples": 200, "steps": [1, 4, 16]},
}


def _write(tmp_path, name: str, doc: dict):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(doc, sort_keys=False))
    return p


def test_teacher_file_errors_exit_2(tmp_path, capsys):
    for doc, expect in [
        ({**TEACHER, "bogus": 1}, "bogus: unknown key"),
        ({**TEACHER, "net": {"kind": "cnn"}}, "net: Input tag 'cnn'"),
        ({**TEACHER, "net": {"kind": "unet", "widht": 3}}, "net.widht: unknown key"),
        ({**TEACHER, "data": {"kind": "gmm", "shape": [8]}}, "net: unet needs image data"),
        ({**TEACHER, "net": {"kind": "unet", "ch_mult": [1, 2, 2, 2, 2]}}, "net: resolution 8 is not divisible"),
    ]:
        f = _write(tmp_path, "t.yaml", doc)
        assert main(["teacher", str(f), "--dry-run", "--tracking-uri", str(tmp_path / "m.db")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and str(f) in err[0] and expect in err[0], err
    f = _write(tmp_path, "ok.yaml", TEACHER)
    assert load_teacher_file(f).net.base_ch == 4
    assert main(["teacher", str(f), "--dry-run"]) == 0 and '"parameters": 2777' in capsys.readouterr().out
    assert not (tmp_path / "m.db").exists()
