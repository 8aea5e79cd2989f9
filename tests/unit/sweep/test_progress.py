"""sweep/progress.py: what a sweep shows of its running trials, plain (a log file) and live (a terminal)."""

import logging
import re

from multistep.sweep.progress import TrialProgress


def test_plain_lines_name_the_trial_its_progress_loss_and_eta(caplog):
    caplog.set_level(logging.INFO, logger="multistep")
    p = TrialProgress(3, live=False)
    p.started(1, "mcd S=4", 3000, " (abc_00001)")
    p.result(1, 1000, 0.125)
    p.result(1, 2000, 0.0625)
    p.result(1, 3000, 0.05)
    p.result(2, 1000)  # not started here (e.g. reported after it ended): ignored
    p.ended(1, "finished in 12 s")
    lines = caplog.messages
    assert lines[0] == "[trial 2/3] mcd S=4 started (abc_00001)"
    assert lines[1] == "[trial 2/3] mcd S=4 iteration 1000/3000, loss 0.125"  # no rate yet: no ETA
    assert re.fullmatch(r"\[trial 2/3\] mcd S=4 iteration 2000/3000, loss 0.0625, ETA \d+ s", lines[2])
    assert lines[3] == "[trial 2/3] mcd S=4 iteration 3000/3000, loss 0.05; final evaluation:"
    assert lines[4] == "[trial 2/3] mcd S=4 finished in 12 s" and len(lines) == 5


def test_live_lines_are_bars_with_events_printed_above_them(capsys):
    p = TrialProgress(2, live=True)
    p.started(0, "dmd S=1", 100)
    p.result(0, 50, 0.5)
    assert p.running[0].bar.n == 50 and "loss 0.5" in p.running[0].bar.postfix
    p.result(0, 100, 0.25)
    assert "final evaluation" in p.running[0].bar.desc
    p.started(1, "scd S=2", 100)
    p.ended(0, "FAILED: boom")
    p.close()
    out = capsys.readouterr().out
    assert "[trial 1/2] dmd S=1 started" in out and "[trial 1/2] dmd S=1 FAILED: boom" in out
    assert not p.running  # every bar closed
