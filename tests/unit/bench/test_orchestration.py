"""bench/orchestration.py: the trial timeline reads the sweep's own progress lines."""

import logging

import pytest

pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_orchestration_timeline_reads_the_sweeps_own_progress_lines(caplog):
    """bench's trial timeline parses what sweep/progress.py prints (a format change broke it once)."""
    from multistep.bench.orchestration import trial_events
    from multistep.sweep.progress import TrialProgress

    caplog.set_level(logging.INFO, logger="multistep")
    p = TrialProgress(2, live=False)
    p.started(0, "mcd S=1", 10, " (a)")
    p.started(1, "mcd S=2", 10, " (b)")
    p.result(0, 5, 0.3)
    p.ended(1, "FAILED after 3 s: boom")
    p.ended(0, "finished in 9 s")
    said = [(float(i), m) for i, m in enumerate(caplog.messages)]  # the n-th line at time n
    assert trial_events(said) == ({0: 0.0, 1: 1.0}, {1: 3.0, 0: 4.0})
