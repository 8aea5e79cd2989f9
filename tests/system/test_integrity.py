"""A sweep whose storage fills up fails in one line, its runs closed (docs/reliability.md). The files that carry
their own integrity and outputs that appear whole are unit-tested beside their modules: checksummed checkpoints and
caches that heal (tests/unit/train/test_checkpoint.py), the fall-back to an earlier checkpoint
(tests/unit/sweep/test_worker.py), staged output folders (tests/unit/test_atomic.py, tests/unit/data/test_convert.py)."""

import re

import pytest


def _flip(path, offset=200, n=64):
    data = bytearray(path.read_bytes())
    for i in range(offset, offset + n):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


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
