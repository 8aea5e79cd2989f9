"""Entry point for `ray job submit` and schedulers: `python jobs/sweep.py sweeps/quickstart.yaml [options]`.

Same arguments as `multistep sweep`; no logic of its own.
"""

from _entry import run

if __name__ == "__main__":
    run("sweep")
