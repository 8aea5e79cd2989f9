"""sweep/search.py: the NSGA-II sampler survives Tune's pickling of the searcher (optuna 5's holds a thread lock)."""

import pickle

from optuna.samplers import NSGAIISampler

from multistep.sweep.search import PicklableNSGAII


def test_the_nsga2_sampler_pickles_with_its_state_and_a_fresh_lock():
    try:
        pickle.dumps(NSGAIISampler(seed=0))
        plain_pickles = True
    except TypeError:
        plain_pickles = False
    sampler = PicklableNSGAII(seed=3)
    again = pickle.loads(pickle.dumps(sampler))
    assert again._thread_lock is not sampler._thread_lock and again._thread_lock.acquire(blocking=False)
    assert again._rng.rng.random() == sampler._rng.rng.random()  # the seeded state came along
    assert isinstance(again, NSGAIISampler) and (plain_pickles or "_thread_lock" in vars(sampler))
