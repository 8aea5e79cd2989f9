"""Entry point for schedulers (cron, a Kubernetes CronJob, a CI schedule, `ray job submit`):
`python jobs/regression.py sweeps/regression.yaml [options]`.

Same arguments as `multistep regress`; no logic of its own. Exit codes: 0 no regression, 1 a point regressed,
2 bad input or no baseline (docs/regression.md).
"""

from _entry import run

if __name__ == "__main__":
    run("regress")
