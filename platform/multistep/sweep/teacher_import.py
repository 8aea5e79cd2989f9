"""`multistep teacher import SPEC.yaml --name NAME`: log a teacher trained elsewhere as an MLflow run.

SPEC.yaml has a `teacher:` section (kind diffusers, torchscript or state_dict; docs/teachers.md), a `data:` section
and optionally `eval: {samples, teacher_steps, seed}` and `experiment:`. The teacher is loaded and checked exactly
as a sweep's pre-flight does (shape, finite, plausible declaration), then a run (tag multistep.kind = teacher,
multistep.teacher_source = its kind) gets the teacher's files as the artifact folder `teacher_files/`, its
declaration as `teacher_import.json`, and the sanity report: its DDIM curve (FD versus steps, step = steps) and
the data's two-sample floor. Any node of a cluster then distils it with `teacher: {kind: mlflow, run_id: ...}`.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

from pydantic import ValidationError

from multistep.config import ConfigError, TrialCfg, describe, read_yaml
from multistep.tracking import tags as tag
from multistep.tracking.teachers import FILES, IMPORT_FILE

log = logging.getLogger(__name__)

CURVE_STEPS = [1, 2, 4, 8, 16, 32, 64, 128, 256]
KEYS = ("experiment", "teacher", "data", "eval")


def load_spec(file: str) -> tuple[TrialCfg, str, list[int]]:
    doc = read_yaml(file)
    if unknown := [k for k in doc if k not in KEYS]:
        raise ConfigError(f"{file}: {unknown[0]}: unknown key (an import file has {', '.join(KEYS)})")
    if "teacher" not in doc or "data" not in doc:
        raise ConfigError(f"{file}: needs a teacher: and a data: section")
    ev = dict(doc.get("eval") or {})
    steps = ev.pop("teacher_steps", CURVE_STEPS)
    try:
        tc = TrialCfg.model_validate({"teacher": doc["teacher"], "data": doc["data"], "eval": ev})
    except ValidationError as e:
        raise ConfigError(f"{file}: {describe(e)}") from None
    if not tc.teacher.imported:
        raise ConfigError(f"{file}: teacher.kind: {tc.teacher.kind}; import takes diffusers, torchscript or state_dict")
    return tc, str(doc.get("experiment", "multistep")), list(steps)


def check_spec(spec: str):
    """(trial config, experiment, DDIM steps) of an import spec, its teacher loaded and checked against its data as
    a sweep's pre-flight would (bad input: ConfigError)."""
    from multistep.teachers import teacher_kind
    from multistep.train.build import sample_shape

    tc, experiment, steps = load_spec(spec)
    teacher_kind(tc.teacher).preflight(
        tc, sample_shape(tc.data, where=f"{spec}: "), f"{spec}: "
    )  # loads, fits the data, plausible
    return tc, experiment, steps


def import_teacher(tc, name: str, experiment: str, steps: list[int], uri: str) -> str:
    """Log a checked teacher trained elsewhere as an MLflow run of `experiment` (its files, its declaration, its DDIM
    curve at `steps`); returns the run id, which sweeps name as teacher: {kind: mlflow, run_id: ...}."""
    from multistep.metrics.evaluate import ddim_curve
    from multistep.teachers import teacher_kind
    from multistep.tracking import mlflow_layout as ml
    from multistep.tracking.runs import close_run, log_files, open_run
    from multistep.train.build import build

    c = build(tc)
    decl = teacher_kind(tc.teacher).declare(tc.teacher)  # c.teacher holds the network: not loaded again
    client = ml.client(uri)
    t = tc.teacher
    tags = {tag.KIND: "teacher", tag.TEACHER_NAME: name, tag.TEACHER_SOURCE: t.kind, tag.DATASET: tc.data.label}
    rid = open_run(client, uri, experiment, f"import-{name}", tags)
    try:
        ml.log_params(
            client, rid, ml.flatten({"teacher": t.model_dump(mode="json"), "data": tc.data.model_dump(mode="json")})
        )
        p = Path(t.path)
        log_files(client, rid, str(p), FILES)
        with tempfile.TemporaryDirectory() as d:
            body = {"teacher": t.model_dump(mode="json", exclude={"path", "run_id", "artifact_path"}), "file": p.name}
            (Path(d) / IMPORT_FILE).write_text(json.dumps(body | {"declaration": decl}, indent=2))
            log_files(client, rid, str(Path(d) / IMPORT_FILE))
        ev = tc.eval
        log.info(f"teacher curve: DDIM at {steps} steps, {ev.samples} samples")
        rows, floor = ddim_curve(c.teacher, c.schedule, c.data, ev.samples, steps, ev.seed, tc.feature_space)
        for metric in dict.fromkeys(r["metric"] for r in rows):  # step = number of DDIM steps
            ml.log_curve(client, rid, metric, [(r["steps"], r["value"]) for r in rows if r["metric"] == metric])
        ml.log_params(client, rid, {f"noise_floor.{k}": f"{v:.6g}" for k, v in floor.items()})
    except BaseException:
        close_run(client, rid, "FAILED")
        raise
    close_run(client, rid, "FINISHED")
    fd = [r for r in rows if r["metric"].startswith("fd_")]
    log.info("teacher DDIM curve: " + ", ".join(f"{r['steps']}: {r['value']:.4g}" for r in fd))
    log.info(f"MLflow: experiment '{experiment}', teacher run {rid} ({uri})")
    return rid
