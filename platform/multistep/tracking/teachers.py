"""Teachers logged as MLflow runs (`multistep teacher`, `teacher: {kind: mlflow, run_id: ...}`): fetched once into
a local cache, so Ray workers load a file and need no MLflow access."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from multistep.config import ConfigError, TeacherCfg
from multistep.tracking import tags as tag
from multistep.train.build import DEFAULT_CACHE

IMPORT_FILE = "teacher_import.json"  # artifact of an imported teacher's run: its declaration and its file's name
FILES = "teacher_files"  # artifact folder of an imported teacher's run: its own files (`multistep teacher import`)


def resolve_mlflow_teacher(t: TeacherCfg, cache_dir: str | os.PathLike = DEFAULT_CACHE) -> TeacherCfg:
    """The local teacher a `kind: mlflow` section names: a `multistep teacher` checkpoint (kind mlflow, path set), or
    an imported teacher's files and declaration (`multistep teacher import`: kind diffusers / torchscript /
    state_dict with a local path). Fetched once into cache_dir."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(os.environ.get("MLFLOW_TRACKING_URI"))
    try:
        source = client.get_run(t.run_id).data.tags.get(tag.TEACHER_SOURCE)
    except Exception:  # unknown run, unreachable server: fetch_mlflow_teacher says which
        source = None
    if source is None:
        return t.model_copy(update={"path": fetch_mlflow_teacher(t, cache_dir)})
    dst = Path(cache_dir) / "teachers" / t.run_id
    body_file = dst / IMPORT_FILE
    if not body_file.is_file():  # run artifacts are written once: a whole cached copy stays valid
        dst.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=dst, prefix=".download-"))
        try:
            client.download_artifacts(t.run_id, FILES, str(tmp))
            client.download_artifacts(t.run_id, IMPORT_FILE, str(tmp))
            shutil.rmtree(dst / FILES, ignore_errors=True)
            os.replace(tmp / FILES, dst / FILES)
            os.replace(tmp / IMPORT_FILE, body_file)  # last: its presence says the copy is whole
        except Exception as e:
            raise ConfigError(
                f"teacher.run_id: cannot fetch the imported teacher of MLflow run {t.run_id}: {e}"
            ) from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    body = json.loads(body_file.read_text())
    files = dst / FILES
    path = files / body["file"]
    path = path if path.is_file() else files  # a folder teacher (a diffusers pipeline) was logged as FILES/ itself
    return TeacherCfg.model_validate(body["teacher"] | {"path": str(path)})


def fetch_mlflow_teacher(t: TeacherCfg, cache_dir: str | os.PathLike = DEFAULT_CACHE) -> str:
    """Download (once) the checkpoint artifact of run `t.run_id` from $MLFLOW_TRACKING_URI; returns the local path."""
    dst = Path(cache_dir) / "teachers" / t.run_id / t.artifact_path
    if dst.is_file():  # run artifacts are written once: the cached copy stays valid
        return str(dst)
    from mlflow.tracking import MlflowClient

    uri = os.environ.get("MLFLOW_TRACKING_URI")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=dst.parent, prefix=".download-")
    try:
        got = MlflowClient(uri).download_artifacts(t.run_id, t.artifact_path, tmp)
        if not Path(got).is_file():
            raise ValueError(f"artifact {t.artifact_path!r} is a folder, not a checkpoint file")
        os.replace(got, dst)
    except Exception as e:  # unknown run, missing artifact, unreachable server
        msg = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise ConfigError(
            f"teacher.run_id: cannot fetch artifact {t.artifact_path!r} of MLflow run {t.run_id} "
            f"from {uri or 'the default tracking URI'}: {msg}"
        ) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return str(dst)
