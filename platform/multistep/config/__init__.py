"""Typed configuration: YAML file -> validated config -> concrete trial configs.

Every user error becomes a `ConfigError` whose one-line message names the file, the field as a dotted path, and
what was expected. Unknown keys are errors everywhere (extra="forbid"). One concern per module:
  errors.py        ConfigError and `describe` (a pydantic ValidationError as one line)
  schema.py        the trial and sweep schema (data, teacher, student, method, train, eval, resources, ...)
  io.py            YAML reading (unique keys, size limit) and `validate_file`
  plan.py          the sweep plan: search axes expanded into trials (`load_sweep`, `SweepPlan`)
  teacher_file.py  the schema of `multistep teacher FILE`
"""

from multistep.config.errors import ConfigError, describe, sub_field_error
from multistep.config.io import MAX_FILE_BYTES, read_yaml, validate_file, with_eval
from multistep.config.plan import SweepPlan, expand, load_sweep, set_path
from multistep.config.schema import (
    TEACHER_ARTIFACT,
    Axis,
    DataCfg,
    EvalCfg,
    MethodCfg,
    PosFloat,
    PosInt,
    RegressionCfg,
    ResourcesCfg,
    RunName,
    ScheduleCfg,
    SchedulerCfg,
    Strict,
    StudentCfg,
    SweepCfg,
    TeacherCfg,
    ToleranceCfg,
    TrainCfg,
    TrialCfg,
    WorkerResourcesCfg,
    extractor_error,
)
from multistep.config.teacher_file import TeacherFileCfg, load_teacher_file
from multistep.methods.anneal import AnnealCfg

__all__ = [
    "MAX_FILE_BYTES",
    "TEACHER_ARTIFACT",
    "AnnealCfg",
    "Axis",
    "ConfigError",
    "DataCfg",
    "EvalCfg",
    "MethodCfg",
    "PosFloat",
    "PosInt",
    "RegressionCfg",
    "ResourcesCfg",
    "RunName",
    "ScheduleCfg",
    "SchedulerCfg",
    "Strict",
    "StudentCfg",
    "SweepCfg",
    "SweepPlan",
    "TeacherCfg",
    "TeacherFileCfg",
    "ToleranceCfg",
    "TrainCfg",
    "TrialCfg",
    "WorkerResourcesCfg",
    "describe",
    "expand",
    "extractor_error",
    "load_sweep",
    "load_teacher_file",
    "read_yaml",
    "set_path",
    "sub_field_error",
    "validate_file",
    "with_eval",
]
