"""The sweep plan: search axes expanded into concrete trial configs (grids crossed, random axes drawn with a seed)."""

from __future__ import annotations

import copy
import itertools
import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import ValidationError

from multistep.config.errors import ConfigError, describe
from multistep.config.io import validate_file
from multistep.config.schema import SweepCfg, TrialCfg


def set_path(doc: dict, dotted: str, value: Any) -> dict:
    out = copy.deepcopy(doc)
    node = out
    parts = dotted.split(".")
    for part in parts[:-1]:
        nxt = node.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise KeyError(dotted)
        node = nxt
    node[parts[-1]] = value
    return out


@dataclass
class Trial:
    """One concrete trial, validated once when the plan is expanded."""

    overrides: dict[str, Any]  # the search values that made it, by dotted config path
    cfg: TrialCfg  # the driver may fill in a local teacher (an MLflow teacher, fetched)
    written: dict  # cfg as the file expanded to (what the plan hash of --resume compares)

    def doc(self) -> dict:
        """The trial config as JSON-able data: what crosses the Ray boundary, MLflow's params, the plan hash."""
        return self.cfg.model_dump(mode="json")


class SweepPlan:
    """A validated sweep: the config, the raw document, and the concrete trials it expands to. An adaptive search
    (search_alg: optuna) plans one trial, the base config: its trials are proposed while the sweep runs
    (`proposed` builds one from the search algorithm's values)."""

    def __init__(self, path: str, cfg: SweepCfg, doc: dict, trials: list[Trial]):
        self.path, self.cfg, self.doc, self.trials = path, cfg, doc, trials

    @property
    def adaptive(self) -> bool:
        return self.cfg.search_alg.adaptive

    def trial_cfg(self, i: int) -> TrialCfg:
        return self.trials[i].cfg

    def proposed(self, values: dict[str, Any]) -> Trial:
        """The trial of a search algorithm's values (dotted config path -> value); ConfigError when invalid."""
        return _trial(_base(self.doc), values, self.path)


ASSET_SECTIONS = ("data", "teacher", "student", "eval")  # what the shared assets depend on (and train.seed)


def _base(doc: dict) -> dict:
    return {k: v for k, v in doc.items() if k in TrialCfg.model_fields}


def _trial(base: dict, ov: dict[str, Any], path: str) -> Trial:
    trial_doc = base
    for k, v in ov.items():
        if k.split(".")[0] not in TrialCfg.model_fields:
            raise ConfigError(
                f"{path}: search.{k}: unknown config path (expected one under {', '.join(TrialCfg.model_fields)})"
            )
        try:
            trial_doc = set_path(trial_doc, k, v)
        except KeyError:
            raise ConfigError(f"{path}: search.{k}: path goes through a non-mapping value") from None
    try:
        tc = TrialCfg.model_validate(trial_doc)
    except ValidationError as e:
        raise ConfigError(f"{path}: {describe(e)} (from search values {ov})") from None
    return Trial(ov, tc, tc.model_dump(mode="json"))


def _adaptive(cfg: SweepCfg, doc: dict, path: str) -> list[Trial]:
    """Check an adaptive search's axes before anything starts: one block, none under the shared assets' sections
    (nor train.seed), every choice and both ends of every range a valid trial. Returns [the base trial]."""
    if isinstance(cfg.search, list):
        raise ConfigError(f"{path}: search: search_alg {cfg.search_alg.name} takes one block of axes, not a list")
    if not cfg.search:
        raise ConfigError(f"{path}: search: search_alg {cfg.search_alg.name} needs at least one axis to search")
    if cfg.num_samples > cfg.max_trials:
        raise ConfigError(f"{path}: num_samples {cfg.num_samples} is more than max_trials = {cfg.max_trials}")
    base = _base(doc)
    for k, a in cfg.search.items():
        if k.split(".")[0] in ASSET_SECTIONS or k == "train.seed":
            raise ConfigError(
                f"{path}: search.{k}: an adaptive search cannot vary {k} (the shared warm start and evaluation "
                f"depend on {', '.join(ASSET_SECTIONS)} and train.seed); use search_alg: grid"
            )
        for v in a.grid or a.choice or a.uniform or a.loguniform:
            _trial(base, {k: v}, path)
    return [_trial(base, {}, path)]


def expand(cfg: SweepCfg, doc: dict, path: str) -> list[Trial]:
    if cfg.search_alg.adaptive:
        return _adaptive(cfg, doc, path)
    blocks = cfg.search if isinstance(cfg.search, list) else [cfg.search]
    n = sum(math.prod(len(a.grid) for a in b.values() if a.grid is not None) * cfg.num_samples for b in blocks)
    if n > cfg.max_trials:
        raise ConfigError(f"{path}: search expands to {n} trials, more than max_trials = {cfg.max_trials}")
    rng = np.random.default_rng(cfg.train.seed)  # random axes are reproducible from the sweep file
    base = _base(doc)
    return [t for b in blocks for t in _expand_block(b, base, cfg.num_samples, rng, path)]


def _expand_block(search: dict, base: dict, num_samples: int, rng, path: str) -> list[Trial]:
    grid_keys = [k for k, a in search.items() if a.grid is not None]
    rand_keys = [k for k, a in search.items() if a.grid is None]
    trials = []
    for combo in itertools.product(*[search[k].grid for k in grid_keys]):
        for _ in range(num_samples):
            ov: dict[str, Any] = dict(zip(grid_keys, combo))
            for k in rand_keys:
                ov[k] = search[k].draw(rng)
            trials.append(_trial(base, ov, path))
    return trials


PBT_SHARED = ("method.name", "method.mode", "method.student_steps", "train.iterations", "train.checkpoint_every")


def _check_pbt(cfg: SweepCfg, trials: list[Trial], path: str) -> None:
    """scheduler: pbt clones checkpoints between the trials of one population: they must be able to take each other's
    weights and schedules, and train in Tune's own trial process (where Tune keeps the checkpoints it hands over)."""
    where = f"{path}: scheduler: pbt"
    if cfg.search_alg.adaptive:
        raise ConfigError(f"{where} cannot be combined with search_alg {cfg.search_alg.name} (Ray Tune refuses both)")
    if not cfg.resources.trial_trains_itself:
        raise ConfigError(f"{where} needs single-worker trials (resources.num_workers: 1, runner: auto or tune)")
    if len(trials) < 2:
        raise ConfigError(f"{where} needs a population: the search gives {len(trials)} trial")
    docs = [t.doc() for t in trials]
    for key in PBT_SHARED:
        values = {str(get_path(doc, key)) for doc in docs}
        if len(values) > 1:
            raise ConfigError(
                f"{where}: every trial must share {key} (checkpoints are cloned between them): {sorted(values)}"
            )
    if "method.anneal.end" in cfg.scheduler.mutations and any(
        t.cfg.method.name != "mcm" or t.cfg.method.anneal.name != "loglinear" for t in trials
    ):
        raise ConfigError(f"{where}: mutations: method.anneal.end needs method.name mcm with anneal name loglinear")
    for k, a in cfg.scheduler.mutations.items():  # every value PBT may set is a valid trial
        for v in a.choice or a.uniform or a.loguniform:
            _trial(docs[0], {k: v}, path)


def get_path(doc: dict, dotted: str):
    for part in dotted.split("."):
        doc = doc[part]
    return doc


def load_sweep(path: str | os.PathLike, eval_overrides: dict | None = None) -> SweepPlan:
    """Read, validate and expand a sweep file; raises ConfigError with a one-line message."""
    cfg, doc = validate_file(SweepCfg, path, eval_overrides)
    trials = expand(cfg, doc, str(path))
    if cfg.scheduler.name == "pbt":
        _check_pbt(cfg, trials, str(path))
    return SweepPlan(str(path), cfg, doc, trials)
