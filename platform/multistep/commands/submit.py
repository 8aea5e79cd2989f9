"""`multistep submit`: its parser and its run (the work is in sweep.submit)."""

from __future__ import annotations

import argparse
import sys

from multistep.sweep import submit as impl

HELP = """\
Validate FILE here, then submit `python jobs/sweep.py FILE` to the Ray cluster whose dashboard is at
--address, with this repository as the job's working dir. Prints the job id. FILE must lie inside the
repository. --tracking-uri and --storage are interpreted on the cluster: use an MLflow server the
workers can reach (e.g. http://<head private IP>:5000) and shared storage (s3://...) on multi-node
clusters; without them the job logs to sqlite and ./ray_results inside its working dir on the head.

Token auth: Ray 2.60 clusters started with a token (~/.ray/auth_token; cluster.yaml ships yours to
every node) reject clients without it, and this client sends it only when RAY_AUTH_MODE=token is set:
  RAY_AUTH_MODE=token multistep submit sweeps/quickstart.yaml --address http://127.0.0.1:8265 --follow
The token is read from RAY_AUTH_TOKEN, the file named by RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token.
Exit codes: 0 submitted (with --follow: the job SUCCEEDED), 1 the job failed or was stopped, 2 bad input."""


def add_parser(subparsers) -> argparse.ArgumentParser:
    s = subparsers.add_parser(
        "submit",
        help="submit a sweep file to a Ray cluster as a Ray Job",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    s.add_argument("file", help="sweep file inside this repository, e.g. sweeps/quickstart.yaml")
    s.add_argument(
        "--address",
        default=None,
        help="Ray dashboard (Jobs API) address, e.g. http://HEAD:8265 (default: $RAY_API_SERVER_ADDRESS, "
        "$RAY_ADDRESS, else http://127.0.0.1:8265, the tunnel `ray dashboard cluster.yaml` opens)",
    )
    s.add_argument(
        "--follow", action="store_true", help="stream the job's logs until it ends; exit 0 only if it SUCCEEDED"
    )
    s.add_argument("--tracking-uri", default=None, help="MLflow tracking URI as seen from the cluster")
    s.add_argument(
        "--storage", default=None, help="Ray Tune/Train storage as seen from the cluster (s3://... on multi-node)"
    )
    s.add_argument(
        "--submission-id", default=None, help="job id to use (duplicates are rejected); default: Ray picks one"
    )
    return s


def run(args) -> int:
    address = impl.default_address(args.address)
    client, job_id = impl.submit_sweep(args.file, address, args.tracking_uri, args.storage, args.submission_id)
    print(job_id, flush=True)
    if not args.tracking_uri:
        print(
            "multistep: note: no --tracking-uri; MLflow data stays in the job's working dir on the head",
            file=sys.stderr,
        )
    if not args.follow:
        print(f"follow it with: ray job logs --address {address} --follow {job_id}", file=sys.stderr)
        return 0
    return impl.follow(client, job_id, address)
