"""Teachers logged as MLflow runs (`multistep teacher`, `teacher: {kind: mlflow, run_id: ...}`): fetched once into
a local cache, so Ray workers load a file and need no MLflow access."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from multistep.config import ConfigError, TeacherCfg
from multistep.train.build import DEFAULT_CACHE


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
    except Exception as e:  # noqa: BLE001 - unknown run, missing artifact, unreachable server
        msg = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise ConfigError(
            f"teacher.run_id: cannot fetch artifact {t.artifact_path!r} of MLflow run {t.run_id} "
            f"from {uri or 'the default tracking URI'}: {msg}"
        ) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return str(dst)
