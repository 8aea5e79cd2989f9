"""The source root `platform/` must never shadow the standard library's `platform` module."""

import subprocess
import sys

from conftest import REPO


def test_platform_is_stdlib_from_repo_root():
    out = subprocess.run(
        [sys.executable, "-c", "import platform; print(platform.system()); print(platform.__file__)"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\n")
    assert out[0] in ("Linux", "Darwin", "Windows")
    assert "site-packages" not in out[1] and not out[1].startswith(str(REPO / "platform"))


def test_source_root_is_not_a_package():
    assert not (REPO / "platform" / "__init__.py").exists()
    assert (REPO / "platform" / "multistep" / "__init__.py").exists()


def test_console_script_help():
    r = subprocess.run(["multistep", "sweep", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--tracking-uri" in r.stdout and "--dry-run" in r.stdout
