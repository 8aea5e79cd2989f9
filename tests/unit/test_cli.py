"""The `multistep` command (cli.py): bad input exits 2 with one line naming the problem, before Ray or MLflow start."""

import subprocess

import pytest

BASE = "name: t\nsearch:\n  method.student_steps: {grid: [1, 2]}\n"


@pytest.mark.parametrize(
    "text, expect",
    [
        (BASE + "bogus: 1\n", "bogus: unknown key"),
        ("train: {iterations: many}\n", "train.iterations"),
        ("method: {student_steps: 0}\n", "method.student_steps"),
        ("train: {learning_rate: -1}\n", "train.learning_rate"),
    ],
)
def test_bad_sweep_file(tmp_path, text, expect):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    r = subprocess.run(["multistep", "sweep", str(f)], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and expect in lines[0] and str(f) in lines[0]
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "ray_results").exists()


def test_missing_file(tmp_path):
    r = subprocess.run(["multistep", "sweep", "nope.yaml"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "nope.yaml: file not found" in r.stderr
    assert not (tmp_path / "mlflow.db").exists()


def test_unreachable_tracking_server_exits_2_naming_the_uri(tmp_path):
    from conftest import REPO, free_port

    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    r = subprocess.run(
        [
            "multistep",
            "sweep",
            str(REPO / "tests" / "data" / "tiny_sweep.yaml"),
            "--tracking-uri",
            uri,
            "--storage",
            str(tmp_path / "rr"),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and uri in r.stderr and "unreachable" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "rr").exists()
