"""A trial's student rebuilt from its checkpoint (state.pt): its trial config (recorded in the checkpoint, or from
a trial config / sweep file), components, method and train state with the checkpoint's weights. What `multistep
eval`, `sample` and `export` start from; typed arguments, no argparse."""

from __future__ import annotations

import re
from pathlib import Path

from multistep.config import ConfigError

TRIAL_DIR = re.compile(r"^trial-(\d+)$")  # Ray Train run folder of a sweep trial (sweep/driver.py)


def load_trial_cfg(config: str, ckpt: Path, trial: int | None, opts: dict | None = None):
    """The TrialCfg of --config: a trial config, or a sweep file and the trial (--trial, or the trial-NNN folder);
    opts (eval.* from --extractor / --inception) replace the file's before it is validated."""
    from multistep.config import SweepCfg, TrialCfg, load_sweep, read_yaml, with_eval

    doc = read_yaml(config)
    if not set(doc) & (set(SweepCfg.model_fields) - set(TrialCfg.model_fields)):
        if trial is not None:
            raise ConfigError(f"--trial: {config} is a single trial config, not a sweep file")
        return _trial_cfg(with_eval(doc, opts), config), None
    plan = load_sweep(config, opts)
    if trial is None:
        found = [int(m.group(1)) for part in ckpt.resolve().parts if (m := TRIAL_DIR.match(part))]
        trial = found[-1] if found else (0 if len(plan.trials) == 1 else None)
        if trial is None:
            raise ConfigError(
                f"--trial: {config} expands to {len(plan.trials)} trials and the checkpoint path "
                f"{ckpt} has no trial-NNN folder; give --trial N"
            )
    if trial >= len(plan.trials):
        raise ConfigError(f"--trial: {config} expands to {len(plan.trials)} trials, there is no trial {trial}")
    # opts once more over the expanded trial: the sweep's search axes may have set eval.* of this trial
    return _trial_cfg(with_eval(plan.trials[trial].doc(), opts), "--extractor/--inception"), trial


def load_student(p: Path, blob: dict, config: str | None = None, trial: int | None = None, opts: dict | None = None):
    """(trial config, trial index, config source, components, method, train state) of a trial checkpoint: its
    trial config from --config (a trial config or a sweep file) or from the checkpoint itself."""
    from multistep.config import with_eval
    from multistep.sweep.worker import CKPT_VERSION
    from multistep.train.build import build, make_method
    from multistep.train.loop import new_state

    if blob.get("version") != CKPT_VERSION:
        raise ConfigError(
            f"{p}: trial checkpoint version {blob.get('version')!r}, this multistep reads version {CKPT_VERSION}"
        )
    if config is not None:
        tc, trial = load_trial_cfg(config, p, trial, opts)
    elif "trial" in blob:  # checkpoints written since the worker records its trial config
        tc, trial, config = _trial_cfg(with_eval(blob["trial"], opts), str(p)), None, str(p)
    else:
        raise ConfigError(
            f"--config: {p} is an older trial checkpoint that records no config; "
            "give the trial config or the sweep file with --config"
        )
    c = build(tc)
    method = make_method(tc, c)
    state = new_state(c.student, tc.train.learning_rate, tc.train.seed, method)
    try:
        state.load_state_dict(blob["state"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        why = " ".join(str(e).split())  # load_state_dict puts the mismatches on later lines
        raise ConfigError(
            f"{p}: does not fit the trial config of {config} ({type(e).__name__}: "
            f"{why[:300] + ('...' if len(why) > 300 else '')})"
        ) from None
    state.ema.eval()
    return tc, trial, config, c, method, state


def _trial_cfg(doc: dict, where: str):
    """A validated TrialCfg; a bad document is a one-line error naming where it came from."""
    from pydantic import ValidationError

    from multistep.config import TrialCfg, describe

    try:
        return TrialCfg.model_validate(doc)
    except ValidationError as e:
        raise ConfigError(f"{where}: {describe(e)}") from None
