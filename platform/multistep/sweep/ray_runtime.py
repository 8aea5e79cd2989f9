"""The one owner of Ray start-up: the environment every Ray process gets, starting or joining Ray, the watchdog
that takes a local instance down with its driver, and shutting it down. Used by the sweep driver, `multistep
teacher`, `multistep submit` (its job's env) and the orchestration benchmark."""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

RAY_ENV_DEFAULTS = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1",  # ray.train.report blocks ~1 poll; 0.1 s keeps reports cheap
    "RAY_TRAIN_V2_ENABLED": "1",
    "TUNE_DISABLE_STRICT_METRIC_CHECKING": "1",  # error reports of failed trials carry no proxy metric
    "TUNE_DISABLE_SIGINT_HANDLER": "1",  # the driver owns SIGINT and stops Tune through SIGUSR1 (sweep/interrupts.py)
    "RAY_AIR_NEW_OUTPUT": "0",  # Tune's legacy reporter, silent at verbose 0: no boxes, no per-trial error blocks
    # glibc: a fixed mmap threshold, so the evaluation's large per-batch arrays go back to the system when freed
    # (its dynamic threshold rises to their size and then serves them from a heap that only grows: +0.7 GB per
    # 30k rows of 3x64x64 samples, docs/evaluation.md); workers inherit it from the local Ray
    "MALLOC_MMAP_THRESHOLD_": "1048576",
}


def apply_env() -> None:
    """RAY_ENV_DEFAULTS into this process's environment (values already set win); before Ray is imported."""
    for k, v in RAY_ENV_DEFAULTS.items():
        os.environ.setdefault(k, v)


def init_ray() -> bool:
    """Start a local Ray instance (True) or join $RAY_ADDRESS / the one already running (False)."""
    import ray

    if ray.is_initialized():
        return False
    apply_env()
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        log.info(f"starting a local Ray instance ({os.cpu_count()} CPUs)")
        ray.init(
            num_cpus=os.cpu_count(),
            resources={"train_driver": 1000},
            include_dashboard=True,
            log_to_driver=False,  # workers' output stays in Ray's worker logs (worker_logs): the driver shows progress
            configure_logging=True,
            logging_level="WARNING",
        )
        watch_local_ray()
        return True
    return False


RAY_LOGGERS = ("ray.tune", "ray.train", "ray.air")


def _logs_dir() -> str:
    import tempfile

    import ray

    try:
        return ray._private.worker._global_node.get_logs_dir_path()  # no public API for the session's log folder
    except AttributeError:
        return tempfile.gettempdir()


def worker_logs() -> str:
    """Where the trial processes' own output goes (Ray's worker-*.out / .err files of this session)."""
    return os.path.join(_logs_dir(), "worker-*.out")


def ray_messages_to_file() -> str:
    """Ray Tune's and Ray Train's own log records (a failed trial's traceback, retries) go to a file in Ray's session
    logs instead of the terminal, where the driver prints one line per trial event itself. Returns the file."""
    import logging

    path = os.path.join(_logs_dir(), f"multistep-driver-{os.getpid()}.log")
    handler = logging.FileHandler(path, delay=True)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in RAY_LOGGERS:
        log = logging.getLogger(name)
        log.handlers = [h for h in log.handlers if not isinstance(h, logging.FileHandler)] + [handler]
        log.propagate = False
    return path


# Runs beside the driver in a session of its own: when the driver is gone (SIGKILL included: no handler can run),
# the local Ray instance it started goes too: GCS, raylet, dashboard, log monitor and every process they started
# (workers, agents: these outlive their raylet otherwise). SIGTERM first, SIGKILL after 5 s.
_WATCHDOG = """
import os, signal, sys, time
signal.signal(signal.SIGINT, signal.SIG_IGN)
driver, heads = int(sys.argv[1]), [int(p) for p in sys.argv[2:]]
def started(p):  # the process's start time (clock ticks since boot): a pid reused later has another
    try:
        return int(open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None
def tree():  # {pid: start time} of the head processes and everything they started (workers, agents, ...)
    kids = {}
    for d in filter(str.isdigit, os.listdir("/proc")):
        try:
            ppid = int(open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        kids.setdefault(ppid, []).append(int(d))
    todo, out = list(heads), {}
    while todo:
        p = todo.pop()
        out[p] = started(p)
        todo += kids.get(p, [])
    return out
known = tree()
while os.getppid() == driver:  # kept current while the driver lives: once the raylet exits, its agents are orphans
    known = {p: t for p, t in known.items() if started(p) == t}  # forget the ones that ended (their pids may return)
    known.update(tree())
    time.sleep(1)
known.update(tree())
for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 0)):
    for p, t in list(known.items()):
        if t is not None and started(p) == t:  # still the very process we saw
            try:
                os.kill(p, sig)
            except OSError:
                pass
    time.sleep(wait)
"""


def watch_local_ray() -> None:
    """Start the watchdog over the head processes of the local Ray instance this process just started."""
    import subprocess
    import sys

    import ray

    node = ray._private.worker._global_node  # the local node's process table (Ray has no public API for it)
    pids = [str(p.process.pid) for procs in node.all_processes.values() for p in procs if p.process is not None]
    subprocess.Popen(
        [sys.executable, "-c", _WATCHDOG, str(os.getpid()), *pids],
        start_new_session=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def shutdown(started_ray: bool) -> None:
    """Stop the local Ray instance this sweep started (a joined cluster stays up)."""
    if started_ray:
        import ray

        ray.shutdown()
