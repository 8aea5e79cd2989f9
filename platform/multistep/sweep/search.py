"""Adaptive search (search_alg: optuna): the sweep's axes as a Ray Tune param_space, Optuna as Tune's searcher.

Imports Ray Tune and Optuna at the top: only the driver imports this module, after Ray has started."""

from __future__ import annotations

import threading

from optuna.samplers import NSGAIISampler, TPESampler
from ray import tune
from ray.tune.search.optuna import OptunaSearch


class FinalOnly(OptunaSearch):
    """OptunaSearch told only a trial's final result: its in-training reports (checkpoints, the proxy metric) carry
    no final metric, and early stopping is the scheduler's (ASHA), not Optuna's pruning."""

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        pass


class PicklableNSGAII(NSGAIISampler):
    """Optuna 5's NSGA-II sampler holds a thread lock, so Tune could not save the searcher with its state (every
    NSGA-II sweep failed as the Tuner started): the lock is left out of the pickle and made anew on load."""

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "_thread_lock"}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._thread_lock = threading.Lock()


def optuna(plan, names: dict) -> tuple[dict, FinalOnly]:
    """(Tune param_space, searcher): grid and choice axes categorical, ranges continuous (log for loguniform); the
    objective(s) as the trial's final report names them (metric families resolved through `names`)."""
    alg = plan.cfg.search_alg
    space = {}
    for k, a in plan.cfg.search.items():
        space[k] = domain(a) if a.discrete is None else tune.choice(a.discrete)
    metrics = [names.get(m, m) for m in alg.metrics]
    seed = plan.cfg.train.seed if alg.seed is None else alg.seed
    sampler = TPESampler(seed=seed) if alg.sampler == "tpe" else PicklableNSGAII(seed=seed)
    one = len(metrics) == 1
    return space, FinalOnly(
        metric=metrics[0] if one else metrics, mode=alg.mode if one else list(alg.mode), sampler=sampler
    )


def domain(a):
    """A choice axis as its list (PBT shifts a cloned value one place along it), a range as Tune's distribution."""
    if a.discrete is not None:
        return list(a.discrete)
    return tune.loguniform(*a.loguniform) if a.loguniform is not None else tune.uniform(*a.uniform)
