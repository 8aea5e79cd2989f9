"""Imported teachers fetched back from their MLflow run (tracking/teachers.py) against a real SQLite store: a
folder teacher (a diffusers pipeline) resolves to the fetched folder, a file teacher to the fetched file."""

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import tiny_unet
from multistep.config import TeacherCfg
from multistep.tracking import tags as tag
from multistep.tracking.runs import log_files, open_run
from multistep.tracking.teachers import FILES, IMPORT_FILE, resolve_mlflow_teacher

diffusers = pytest.importorskip("diffusers")


def imported_run(tmp_path, uri: str, source, teacher: dict) -> str:
    """A run as `multistep teacher import` logs it: the teacher's own files under FILES, its body beside them."""
    client = MlflowClient(uri)
    rid = open_run(client, uri, "exp", "import-t", {tag.KIND: "teacher", tag.TEACHER_SOURCE: teacher["kind"]})
    log_files(client, rid, str(source), FILES)
    body = tmp_path / IMPORT_FILE
    body.write_text(json.dumps({"teacher": teacher, "file": source.name, "declaration": {}}))
    log_files(client, rid, str(body))
    return rid


def test_a_folder_teacher_and_a_file_teacher_resolve_to_their_fetched_copies(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    pipe = tmp_path / "pipe"
    diffusers.DDPMPipeline(unet=tiny_unet(), scheduler=diffusers.DDPMScheduler()).save_pretrained(str(pipe))
    folder = imported_run(tmp_path, uri, pipe, {"kind": "diffusers", "check": False})
    got = resolve_mlflow_teacher(TeacherCfg(kind="mlflow", run_id=folder), tmp_path / "cache")
    assert got.kind == "diffusers" and (Path(got.path) / "model_index.json").is_file()
    assert Path(got.path) == tmp_path / "cache" / "teachers" / folder / FILES

    weights = tmp_path / "net.pt"
    weights.write_bytes(b"weights")
    teacher = {"kind": "state_dict", "builder": "multistep.nets.mlp:MLP", "parameterization": "v", "check": False}
    file = imported_run(tmp_path, uri, weights, teacher)
    got = resolve_mlflow_teacher(TeacherCfg(kind="mlflow", run_id=file), tmp_path / "cache")
    assert got.kind == "state_dict" and Path(got.path) == tmp_path / "cache" / "teachers" / file / FILES / "net.pt"
    assert Path(got.path).read_bytes() == b"weights"
