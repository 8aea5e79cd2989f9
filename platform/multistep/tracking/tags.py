"""The MLflow tag names every tool relies on (docs/architecture.md, "Contracts"): one place, one name each."""

from __future__ import annotations

BASELINE_PROMOTED_AT = "multistep.baseline.promoted_at"
BASELINE_PROMOTED_BY = "multistep.baseline.promoted_by"
BASELINE_REASON = "multistep.baseline.reason"
BASELINE_REPLACES = "multistep.baseline.replaces"
CHECKPOINT_FALLBACK = "multistep.checkpoint_fallback"
DATASET = "multistep.dataset"
ERROR = "multistep.error"
EVAL_REF_HASH = "multistep.eval_ref_hash"
GIT_COMMIT = "multistep.git_commit"
INCOMPLETE = "multistep.incomplete"  # a sweep run interrupted or with failed trials: never a baseline
INTERRUPTED = "multistep.interrupted"  # a trial run KILLED because its sweep stopped, not by the scheduler
KIND = "multistep.kind"
METHOD = "multistep.method"
NET = "multistep.net"
PLAN_HASH = "multistep.plan_hash"
REGRESS_BASELINE = "multistep.regress.baseline"
REGRESS_BASELINE_RUN = "multistep.regress.baseline_run"
REGRESS_CURRENT_RUN = "multistep.regress.current_run"
REGRESS_REGRESSED = "multistep.regress.regressed"
REGRESS_RUN = "multistep.regress.run"
REGRESS_VERDICT = "multistep.regress.verdict"
REGRESSION_BASELINE = "multistep.regression_baseline"
RESUMED_FROM_ITERATION = "multistep.resumed_from_iteration"
RUNNER = "multistep.runner"
STORAGE = "multistep.storage"
SWEEP_ID = "multistep.sweep_id"
SWEEP_NAME = "multistep.sweep_name"
TEACHER = "multistep.teacher"
TEACHER_NAME = "multistep.teacher_name"
EVAL_PROTOCOL = "multistep.eval_protocol"  # N, feature space (detector sha256), reference, streaming, repeats
EVAL_REFERENCE = "multistep.eval_reference_sha256"  # sha256 of eval.reference, the statistics FD is measured against
TEACHER_SOURCE = "multistep.teacher_source"  # an imported teacher run: diffusers, torchscript or state_dict
TRIAL_INDEX = "multistep.trial_index"
PBT_PARENT_RUN = "multistep.pbt.parent_run_id"  # PBT: the run whose checkpoint this trial last continued from
PBT_PARENT_ITERATION = "multistep.pbt.parent_iteration"  # ... and at which iteration (pbt/exploit_*.json: configs)
SEARCH_VALUES = "multistep.search_values"  # an adaptive search's proposal (JSON, by dotted config path)
BASELINE_PREFIX = "multistep.baseline."  # + promoted_by / promoted_at / reason / demoted_* / replaced_by / replaces
