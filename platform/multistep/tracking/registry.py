"""MLflow's model registry for exported students (`multistep export --register NAME`)."""

from __future__ import annotations

from pathlib import Path

from multistep.tracking import mlflow_layout as ml
from multistep.tracking import tags as tag


def register(uri: str, name: str, folder: str | Path, fmt: str, spec: dict) -> str:
    """A new version of registered model `name` whose source is the export, logged as artifacts `export/<fmt>` of
    the student's trial run (or of a new run of kind export when the checkpoint records none); the version's tags
    carry the method, S, format, the trial's final metrics at S and the sweep run it belongs to."""
    client = ml.client(uri)
    run = ml.get_run(client, spec.get("trial_run_id") or "")
    if run is None:
        exp_id = ml.ensure_experiment(client, "multistep", uri)
        run = client.create_run(exp_id, run_name=f"export-{name}", tags={tag.KIND: "export"})
        client.set_terminated(run.info.run_id, "FINISHED")
        run = client.get_run(run.info.run_id)
    rid = run.info.run_id
    client.log_artifacts(rid, str(folder), f"export/{fmt}")
    try:
        client.get_registered_model(name)
    except Exception:  # not registered yet
        client.create_registered_model(name, description="multistep students (multistep export --register)")
    S = spec["student_steps"]
    tags = {
        "multistep.method": str(spec["method"]),
        "multistep.student_steps": str(S),
        "multistep.format": fmt,
        "multistep.sweep_run_id": run.data.tags.get("mlflow.parentRunId", ""),
    }
    for key in run.data.metrics:  # the trial's evaluation at its own S (step = sampling steps)
        hist = [m for m in client.get_metric_history(rid, key) if m.step == S and not key.startswith("train/")]
        if hist:
            tags[f"metric.{key}"] = f"{hist[-1].value:.6g}"
    v = client.create_model_version(name, source=f"runs:/{rid}/export/{fmt}", run_id=rid, tags=tags)
    return v.version
