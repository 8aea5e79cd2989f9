"""`multistep submit`: run a sweep file on a Ray cluster as a Ray Job (docs/cluster.md).

The job runs `python jobs/sweep.py FILE ...` in a copy of this repository (the runtime env's
working_dir) with the package shipped as a py_module, so every process of the job (driver, trial
drivers, Train workers) imports the code you submitted, not whatever the nodes have installed.
Ray is imported only after the sweep file is validated.
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from pathlib import Path

from multistep.config import ConfigError

REPO = Path(__file__).resolve().parents[3]  # platform/multistep/sweep/submit.py -> repository root
ENTRY = "jobs/sweep.py"
# Never uploaded (besides what .gitignore already skips): history, caches, local results and stores.
EXCLUDES = [
    ".git",
    "**/__pycache__",
    "*.egg-info",
    ".pytest_cache",
    ".benchmarks",
    ".ci",
    "ray_results",
    "mlruns",
    "mlartifacts",
    "*.db",
]
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


def _relative_to_repo(file: str) -> str:
    path = Path(file).resolve()
    if not (REPO / ENTRY).is_file():
        raise ConfigError(f"{REPO}: not a multistep source checkout ({ENTRY} missing); submit from an editable install")
    try:
        return path.relative_to(REPO).as_posix()
    except ValueError:
        raise ConfigError(f"{file}: must be inside {REPO}, the folder shipped to the cluster") from None


def runtime_env() -> dict:
    """What the job runs with: this checkout as working dir, the package on every worker's path."""
    from multistep.sweep.ray_runtime import RAY_ENV_DEFAULTS

    return {
        "working_dir": str(REPO),
        "py_modules": [str(REPO / "platform" / "multistep")],
        "excludes": EXCLUDES,
        "env_vars": dict(RAY_ENV_DEFAULTS),
    }


def _one_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return f"{e.__class__.__name__}: {text[0] if text else ''}"[:300]


def default_address(address: str | None = None) -> str:
    """The Jobs API address: the one given, else $RAY_API_SERVER_ADDRESS, $RAY_ADDRESS, the local dashboard."""
    return (
        address or os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS") or "http://127.0.0.1:8265"
    )


def submit_sweep(
    file: str,
    address: str,
    tracking_uri: str | None = None,
    storage: str | None = None,
    submission_id: str | None = None,
):
    """Validate the sweep file here and submit `python jobs/sweep.py FILE` as a Ray Job at `address` (the
    repository as its working dir). Returns (the JobSubmissionClient, the job id). Bad input: ConfigError."""
    from multistep.config import load_sweep

    load_sweep(file)  # bad input -> ConfigError -> exit 2
    entry = ["python", ENTRY, _relative_to_repo(file)]
    entry += ["--tracking-uri", tracking_uri] if tracking_uri else []
    entry += ["--storage", storage] if storage else []
    from ray.job_submission import JobSubmissionClient

    hidden = {v: os.environ.pop(v) for v in ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS") if v in os.environ}
    try:  # (Ray would let those override the address chosen above)
        client = JobSubmissionClient(address)
    except Exception as e:  # unreachable, refused, or auth: all fixed by the user
        hint = "; token auth: set RAY_AUTH_MODE=token (see --help)" if "uthentication" in str(e) else ""
        raise ConfigError(f"--address {address}: cannot use the Ray Jobs API ({_one_line(e)}){hint}") from None
    finally:
        os.environ.update(hidden)
    try:
        job_id = client.submit_job(entrypoint=shlex.join(entry), runtime_env=runtime_env(), submission_id=submission_id)
    except Exception as e:  # e.g. duplicate submission id, upload too large
        raise ConfigError(f"{file}: job not submitted ({_one_line(e)})") from None
    return client, job_id


def follow(client, job_id: str, address: str) -> int:
    """Stream the job's logs until it ends; 0 if it SUCCEEDED, else 1."""
    import asyncio

    shown = 0  # characters of the log printed so far

    async def tail():
        nonlocal shown
        seen = 0  # every (re)connection streams the log from its start
        async for chunk in client.tail_job_logs(job_id):
            if seen + len(chunk) > shown:
                print(chunk[max(0, shown - seen) :], end="", flush=True)
                shown = seen + len(chunk)
            seen += len(chunk)

    def status() -> str:
        return str(client.get_job_status(job_id).value)

    try:
        for attempt in range(1, 11):
            try:
                asyncio.run(tail())
                break
            except RuntimeError as e:  # the stream dropped mid-job (e.g. close code 1006)
                if status() in TERMINAL:
                    break
                print(f"multistep: log stream interrupted ({e}); reconnecting ({attempt}/10)", file=sys.stderr)
                time.sleep(2)
        while (final := status()) not in TERMINAL:
            time.sleep(1)  # the status can lag the end of the log stream
    except KeyboardInterrupt:
        print(f"\nthe job keeps running; stop it with: ray job stop --address {address} {job_id}", file=sys.stderr)
        raise
    info = client.get_job_info(job_id)
    code = f", driver exit code {info.driver_exit_code}" if info.driver_exit_code is not None else ""
    print(f"job {job_id}: {final}{code}", file=sys.stderr)
    return 0 if final == "SUCCEEDED" else 1
