"""config/io.py: a sweep file too large or not UTF-8 is refused with one line."""

import pytest

from multistep.config import ConfigError, load_sweep


def test_huge_file(tmp_path):
    f = tmp_path / "huge.yaml"
    f.write_text("# pad\n" * 300_000)
    with pytest.raises(ConfigError, match="more than the"):
        load_sweep(f)


def test_not_utf8(tmp_path):
    f = tmp_path / "bin.yaml"
    f.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ConfigError, match="cannot read"):
        load_sweep(f)
