"""Data parallelism of the sweep workers (train/replicas.py) with a real gloo process group: two ranks on
two halves of a batch take exactly the step one process takes on the whole batch."""

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from conftest import exit_spawned_rank
from multistep.train.loop import fit, new_state
from multistep.train.replicas import Replicas

BATCH, STEPS = 8, 5


class MeanSquares:
    """A deterministic loss that is a mean over examples (as every method's loss is)."""

    def loss(self, student, x, it, total, g):
        loss = (student(x) - x.sum(1, keepdim=True)).square().mean()
        return loss, {"loss": loss.detach()}

    def after_step(self, *a):
        pass


def _data() -> torch.Tensor:
    return torch.randn(STEPS, BATCH, 3, generator=torch.Generator().manual_seed(1))


def _train(rank: int, world: int, seed: int) -> tuple[dict, list]:
    torch.manual_seed(seed)  # ranks start from DIFFERENT weights: broadcast must fix it
    net = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 1))
    replicas = Replicas() if world > 1 else None
    if replicas:
        replicas.broadcast(net)
    state = new_state(net, 1e-2, 0)
    data, per = _data(), BATCH // world
    logged = []
    fit(
        state,
        MeanSquares(),
        lambda g: data[state.iteration, rank * per : (rank + 1) * per],
        STEPS,
        1.0,
        0.9,
        1,
        10**6,
        hooks=type(
            "H", (), {"log": lambda self, it, m: logged.append(m["loss"]), "checkpoint": lambda self, it, s: None}
        )(),
        replicas=replicas,
    )
    return {k: v.detach().clone() for k, v in net.state_dict().items()}, logged


def _rank(rank: int, world: int, out: str) -> None:
    torch.set_num_threads(1)
    # a FileStore rendezvous: no port picked in advance that another process can take first (EADDRINUSE)
    dist.init_process_group("gloo", init_method=f"file://{out}/rendezvous", rank=rank, world_size=world)
    try:
        torch.save(_train(rank, world, seed=rank), f"{out}/rank{rank}.pt")  # fit ends with a barrier (Replicas.finish)
    finally:
        dist.destroy_process_group()
    exit_spawned_rank()


def test_two_gloo_ranks_take_the_single_process_step(tmp_path, one_thread):
    mp.spawn(_rank, args=(2, str(tmp_path)), nprocs=2, join=True)
    (sd0, log0), (sd1, log1) = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    single, log = _train(0, 1, seed=0)
    for k in single:
        assert torch.equal(sd0[k], sd1[k]), k  # the replicas never drift apart
        torch.testing.assert_close(sd0[k], single[k], rtol=1e-5, atol=1e-6)  # = one process on the whole batch
    assert log0 == log1  # logged means are averaged over ranks
    torch.testing.assert_close(torch.tensor(log0), torch.tensor(log), rtol=1e-5, atol=1e-7)
    assert single["0.weight"].ne(_train(0, 1, seed=1)[0]["0.weight"]).any()  # (seeds do matter: the test can fail)


@pytest.mark.slow
def test_two_worker_trial_through_ray_train(ray_local, tiny_sweep, tmp_path, monkeypatch):
    """The same trial with 2 Ray Train workers (gloo): finishes, logs one averaged curve, and its checkpoints
    keep each rank's own random stream (a resumed rank must not replay rank 0's noise). Storage is given as
    a URI (file://, the code path of s3:// and gs://): Ray writes there, result files are copied there."""
    import yaml
    from mlflow.tracking import MlflowClient

    from multistep.config import load_sweep
    from multistep.sweep.driver import run_sweep

    doc = yaml.safe_load(tiny_sweep.read_text())
    doc["search"] = {"method.student_steps": {"grid": [2]}}
    # half a CPU each: the group fits the suite's 2-CPU Ray beside anything an earlier test left holding a CPU
    doc["resources"] = {"num_workers": 2, "cpus_per_worker": 0.5, "max_concurrent_trials": 1}
    doc["train"].update(precision="bf16", channels_last=True)  # the GPU switches' logic, on CPU
    f = tmp_path / "s.yaml"
    f.write_text(yaml.safe_dump(doc))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.chdir(tmp_path)  # local caches and results: ./ray_results
    assert run_sweep(load_sweep(f), uri, f"file://{tmp_path / 'rr'}") == 0
    client = MlflowClient(uri)
    trial = next(
        r
        for r in client.search_runs([client.get_experiment_by_name("tests").experiment_id])
        if r.data.tags.get("multistep.kind") == "trial"
    )
    assert [m.step for m in client.get_metric_history(trial.info.run_id, "train/loss")] == [20, 40, 60]
    assert 0 < trial.data.metrics["fd_identity_400"] < float("inf")
    (sweep_dir,) = (tmp_path / "rr").glob("tiny-*")
    assert {"results.parquet", "results.csv", "metric_vs_steps.png"} <= {p.name for p in sweep_dir.iterdir()}
    assert (tmp_path / "ray_results" / sweep_dir.name / "results.parquet").is_file()
    assert not (tmp_path / "rr" / "cache").exists() and (tmp_path / "ray_results" / "cache").is_dir()
    ckpts = sorted((tmp_path / "rr").rglob("state.pt"))
    assert ckpts
    rngs = torch.load(ckpts[-1], weights_only=True)["rng_per_rank"]
    assert len(rngs) == 2 and not torch.equal(rngs[0][0], rngs[1][0])


def _teacher_rank(rank: int, world: int, out: str) -> None:
    from multistep.diffusion.schedules import make_schedule
    from multistep.nets.mlp import MLP
    from multistep.train.teacher import train_teacher

    torch.set_num_threads(1)
    # a FileStore rendezvous: no port picked in advance that another process can take first (EADDRINUSE)
    dist.init_process_group("gloo", init_method=f"file://{out}/rendezvous", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)  # identical initial weights, as teacher_job seeds them
        g = torch.Generator().manual_seed(rank)  # each rank its own data
        net, ema, hist = train_teacher(
            MLP(3, 16, 1, 8),
            make_schedule("cosine"),
            iter(lambda: torch.randn(8, 3, generator=g), None),
            6,
            1e-2,
            seed=rank,
            log_every=3,
            replicas=Replicas(),
        )
        torch.save((net.state_dict(), [h["loss"] for h in hist]), f"{out}/teacher{rank}.pt")
    finally:
        dist.destroy_process_group()
    exit_spawned_rank()


def test_teacher_training_on_two_gloo_ranks_stays_in_step(tmp_path, one_thread):
    """`multistep teacher` with several workers: different data per rank, one averaged step, one averaged loss."""
    mp.spawn(_teacher_rank, args=(2, str(tmp_path)), nprocs=2, join=True)
    (sd0, loss0), (sd1, loss1) = (torch.load(tmp_path / f"teacher{r}.pt") for r in (0, 1))
    assert all(torch.equal(sd0[k], sd1[k]) for k in sd0) and loss0 == loss1 and len(loss0) == 2
