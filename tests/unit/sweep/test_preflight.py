"""Pre-flight (sweep/preflight.py): every unusable path, address or input of a sweep is one line naming the flag or
field and the value, exit 2, before Ray starts or an MLflow run exists (docs/reliability.md).

All cases run in ONE fresh Python process (`multistep.cli.main` per case), which then reports whether Ray was ever
imported: none of them may get that far. Each case also must leave no MLflow database and no storage folder.
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import yaml

from conftest import REPO, garble

TINY = yaml.safe_load((REPO / "tests" / "data" / "tiny_sweep.yaml").read_text())
NO_GPU = not torch.cuda.is_available()


def _sweep(folder, name, **sections):
    doc = {**TINY, **sections}
    p = folder / f"{name}.yaml"
    p.write_text(yaml.safe_dump(doc))
    return str(p)


def _image_inputs(folder):
    """A Parquet folder of 3x8x8 images, an empty one, one with a truncated shard, and a 1x8x8 teacher."""
    from multistep.data.parquet import write_shards
    from multistep.train.teacher import build_net, save_teacher

    rng = np.random.default_rng(0)
    write_shards(rng.integers(0, 256, (40, 8, 8, 3), dtype=np.uint8), None, folder / "rgb", shard_size=20)
    (folder / "empty").mkdir()
    write_shards(rng.integers(0, 256, (40, 8, 8, 3), dtype=np.uint8), None, folder / "trunc", shard_size=20)
    shard = sorted((folder / "trunc").glob("*.parquet"))[1]
    shard.write_bytes(shard.read_bytes()[:100])
    write_shards(rng.integers(0, 256, (40, 8, 8, 3), dtype=np.uint8), None, folder / "garbled", 20, row_group=10)
    garble(sorted((folder / "garbled").glob("*.parquet"))[1], row_group=1)  # data pages only: the footer reads
    net_cfg = {"kind": "unet", "base_ch": 4, "ch_mult": [1], "time_dim": 8, "in_ch": 1, "resolution": 8}
    meta = {"schedule": {"name": "cosine", "params": {}}, "shape": [1, 8, 8]}
    save_teacher(folder / "gray.pt", net_cfg, build_net(net_cfg).state_dict(), meta)
    rgb_cfg = {**net_cfg, "in_ch": 3}
    save_teacher(folder / "rgb.pt", rgb_cfg, build_net(rgb_cfg).state_dict(), {**meta, "shape": [3, 8, 8]})
    save_teacher(folder / "noshape.pt", net_cfg, build_net(net_cfg).state_dict(), {"schedule": meta["schedule"]})
    (folder / "garbage.pt").write_bytes(b"not a checkpoint at all")
    from multistep.train import checkpoint

    checkpoint.save(folder / "student.pt", {"version": 1, "state": {"ema": {}}, "rng_per_rank": []})
    import pyarrow.parquet as pq

    (folder / "zero").mkdir()
    good = sorted((folder / "rgb").glob("*.parquet"))[0]
    pq.write_table(pq.read_table(good).slice(0, 0), folder / "zero" / good.name)  # the schema and metadata, 0 rows


def cases(tmp):
    """(id, argv after `multistep`, text the one error line must contain)."""
    ok = _sweep(tmp, "ok")
    (tmp / "afile").write_text("x")
    _image_inputs(tmp)
    db = f"sqlite:///{tmp / 'db' / 'm.db'}"
    st = ["--storage", str(tmp / "st")]
    teacher = lambda p: {"kind": "checkpoint", "path": str(p)}
    rows = [
        ("scheme", ["sweep", ok, "--tracking-uri", "foo://x", *st], "--tracking-uri foo://x: unsupported scheme 'foo'"),
        (
            "sqlite-dir",
            ["sweep", ok, "--tracking-uri", "sqlite:////proc/nope/m.db", *st],
            "cannot create /proc/nope/m.db",
        ),
        ("bare-path", ["sweep", ok, "--tracking-uri", "/proc/nope", *st], "--tracking-uri /proc/nope: a bare path"),
        (
            "storage-file",
            ["sweep", ok, "--tracking-uri", db, "--storage", str(tmp / "afile")],
            "exists and is not a folder",
        ),
        ("storage-proc", ["sweep", ok, "--tracking-uri", db, "--storage", "/proc/x"], "--storage /proc/x: cannot"),
        (
            "storage-scheme",
            ["sweep", ok, "--tracking-uri", db, "--storage", "bogus://bucket/x"],
            "--storage bogus://bucket/x",
        ),
        (
            "dry-run-storage",
            ["sweep", ok, "--dry-run", "--tracking-uri", db, "--storage", "/proc/x"],
            "--storage /proc/x",
        ),
        (
            "resume-nothing",
            ["sweep", ok, "--resume", "--tracking-uri", db, *st],
            "--resume: no earlier sweep named 'tiny'",
        ),
        (
            "cpus",
            ["sweep", _sweep(tmp, "cpus", resources={"cpus_per_worker": 64}), "--tracking-uri", db, *st],
            "resources.cpus_per_worker: 64 x 1 worker(s) = 64 CPUs, but this machine (local Ray) has",
        ),
        (
            "teacher-missing",
            [
                "sweep",
                _sweep(tmp, "tm", data={"kind": "digits"}, teacher=teacher(tmp / "no.pt")),
                "--tracking-uri",
                db,
                *st,
            ],
            "teacher.path",
        ),
        (
            "teacher-garbage",
            [
                "sweep",
                _sweep(tmp, "tg", data={"kind": "digits"}, teacher=teacher(tmp / "garbage.pt")),
                "--tracking-uri",
                db,
                *st,
            ],
            "teacher.path",
        ),
        (
            "shape-mismatch",
            [
                "sweep",
                _sweep(tmp, "sm", data={"kind": "parquet", "path": str(tmp / "rgb")}, teacher=teacher(tmp / "gray.pt")),
                "--tracking-uri",
                db,
                *st,
            ],
            "trained on samples of shape (1, 8, 8), but this data",
        ),
        (
            "parquet-empty",
            [
                "sweep",
                _sweep(
                    tmp, "pe", data={"kind": "parquet", "path": str(tmp / "empty")}, teacher=teacher(tmp / "gray.pt")
                ),
                "--tracking-uri",
                db,
                *st,
            ],
            "data.path",
        ),
        (
            "parquet-truncated",
            [
                "sweep",
                _sweep(
                    tmp, "pt", data={"kind": "parquet", "path": str(tmp / "trunc")}, teacher=teacher(tmp / "gray.pt")
                ),
                "--tracking-uri",
                db,
                *st,
            ],
            "not a readable Parquet file",
        ),
        (
            "parquet-garbled",
            [
                "sweep",
                _sweep(
                    tmp, "pg", data={"kind": "parquet", "path": str(tmp / "garbled")}, teacher=teacher(tmp / "rgb.pt")
                ),
                "--tracking-uri",
                db,
                *st,
            ],
            "shard-00001.parquet: does not match manifest.json",
        ),
        ("eval-samples", ["sweep", _sweep(tmp, "es", eval={"samples": 1}), "--tracking-uri", db, *st], "eval.samples"),
        (
            "parquet-zero-rows",
            [
                "sweep",
                _sweep(
                    tmp, "pz", data={"kind": "parquet", "path": str(tmp / "zero")}, teacher=teacher(tmp / "gray.pt")
                ),
                "--tracking-uri",
                db,
                *st,
            ],
            "empty shard (0 rows)",
        ),
        (
            "teacher-is-a-student",
            [
                "sweep",
                _sweep(tmp, "ts", data={"kind": "digits"}, teacher=teacher(tmp / "student.pt")),
                "--tracking-uri",
                db,
                *st,
            ],
            "not a multistep teacher checkpoint",
        ),
        (
            "teacher-without-shape",
            [
                "sweep",
                _sweep(
                    tmp, "tn", data={"kind": "parquet", "path": str(tmp / "rgb")}, teacher=teacher(tmp / "noshape.pt")
                ),
                "--tracking-uri",
                db,
                *st,
            ],
            "does not take samples of this data's shape (3, 8, 8)",
        ),
    ]
    if NO_GPU:
        rows.append(
            (
                "gpu",
                ["sweep", _sweep(tmp, "gpu", resources={"use_gpu": True}), "--tracking-uri", db, *st],
                "resources.use_gpu: true, but local Ray would see no GPU",
            )
        )
    return rows


RUNNER = textwrap.dedent("""
    import contextlib, io, json, sys
    from multistep.cli import main
    out = []
    for argv in json.loads(sys.argv[1]):
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                rc = main(argv)
            except SystemExit as e:
                rc = e.code
            except BaseException as e:
                rc = f"raised {type(e).__name__}: {e}"
        out.append({"rc": rc, "stderr": err.getvalue()})
    print(json.dumps({"results": out, "ray_imported": "ray" in sys.modules}))
""")


@pytest.fixture(scope="module")
def outcome(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("preflight")
    rows = cases(tmp)
    proc = subprocess.run(
        [sys.executable, "-c", RUNNER, json.dumps([argv for _, argv, _ in rows])],
        cwd=tmp,
        capture_output=True,
        text=True,
        timeout=300,
        env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    return tmp, {name: (r, expect) for (name, _, expect), r in zip(rows, res["results"])}, res["ray_imported"]


def test_every_case_exits_2_with_one_line_naming_the_value(outcome):
    tmp, results, _ = outcome
    wrong = {}
    for name, (r, expect) in results.items():
        errors = [line for line in r["stderr"].splitlines() if line.startswith("multistep: error:")]
        if r["rc"] != 2 or len(errors) != 1 or expect not in errors[0] or "Traceback" in r["stderr"]:
            wrong[name] = (r["rc"], expect, r["stderr"][-800:])
    assert not wrong, wrong


def test_nothing_started_and_nothing_created(outcome):
    tmp, results, ray_imported = outcome
    assert len(results) >= 15
    assert not ray_imported  # no case got as far as importing Ray, let alone starting it
    assert not (tmp / "db").exists()  # no MLflow store, so no run
    assert not (tmp / "st").exists()  # the storage folder made for the probe was removed again
    assert not any(tmp.glob("**/.multistep-probe-*"))


def test_dry_run_runs_the_preflight_and_leaves_nothing(tmp_path, capsys):
    from multistep.cli import main

    ok = _sweep(tmp_path, "ok")
    rc = main(
        [
            "sweep",
            ok,
            "--dry-run",
            "--tracking-uri",
            f"sqlite:///{tmp_path / 'm.db'}",
            "--storage",
            str(tmp_path / "new" / "st"),
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0 and "pre-flight passed" in out and "2 trial(s)" in out
    assert not (tmp_path / "new").exists() and not (tmp_path / "m.db").exists()


def test_resume_of_a_changed_file_is_refused_before_anything_starts(tmp_path, capsys):
    """A real store holding an earlier sweep of this name whose plan differs: refused with the run named."""
    from mlflow.tracking import MlflowClient

    from multistep.cli import main

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("tests")
    run = client.create_run(
        exp,
        tags={
            "multistep.kind": "sweep",
            "multistep.sweep_name": "tiny",
            "multistep.plan_hash": "0000",
            "multistep.runner": "tune",
        },
    )
    client.set_terminated(run.info.run_id, "KILLED")
    rc = main(["sweep", _sweep(tmp_path, "ok"), "--resume", "--tracking-uri", uri, "--storage", str(tmp_path / "st")])
    err = capsys.readouterr().err
    assert rc == 2 and f"no longer expands to the trials of sweep run {run.info.run_id}" in err
    assert len(client.search_runs([exp])) == 1 and not (tmp_path / "st").exists()


def test_resume_of_a_sweep_whose_trial_runs_were_only_partly_created_is_refused(tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    from multistep.cli import main
    from multistep.config import load_sweep
    from multistep.sweep.driver import plan_hash

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("tests")
    f = _sweep(tmp_path, "ok")
    tags = {"multistep.kind": "sweep", "multistep.sweep_name": "tiny", "multistep.runner": "tune"}
    run = client.create_run(exp, tags=tags | {"multistep.plan_hash": plan_hash(load_sweep(f))})
    child = {"mlflow.parentRunId": run.info.run_id, "multistep.kind": "trial", "multistep.trial_index": "0"}
    client.create_run(exp, tags=child)  # trial 1 of 2 was never created: the driver died while opening the runs
    rc = main(["sweep", f, "--resume", "--tracking-uri", uri, "--storage", str(tmp_path / "st")])
    err = capsys.readouterr().err
    assert rc == 2 and f"sweep run {run.info.run_id} has no trial run for 1 of its 2 trials" in err
    assert not (tmp_path / "st").exists()


def test_parquet_data_is_read_whole_before_anything_starts_unless_skipped(tmp_path, capsys):
    """A shard garbled after `data convert` fails the pre-flight (its footer still reads); --skip-data-check lets
    it through to the dry run; a sound folder reports what was read, against its manifest."""
    from multistep.cli import main

    _image_inputs(tmp_path)
    rgb = {"kind": "checkpoint", "path": str(tmp_path / "rgb.pt")}
    run = ["--dry-run", "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}", "--storage", str(tmp_path / "st")]
    garbled = _sweep(tmp_path, "pg", data={"kind": "parquet", "path": str(tmp_path / "garbled")}, teacher=rgb)
    assert main(["sweep", garbled, *run]) == 2
    assert "row group 1 of 2 (rows 10-19)" in capsys.readouterr().err
    assert main(["sweep", garbled, *run, "--skip-data-check"]) == 0
    assert "manifest.json" not in capsys.readouterr().out
    sound = _sweep(tmp_path, "ok", data={"kind": "parquet", "path": str(tmp_path / "rgb")}, teacher=rgb)
    assert main(["sweep", sound, *run]) == 0
    assert "2 shard(s), 40 rows" in capsys.readouterr().out
