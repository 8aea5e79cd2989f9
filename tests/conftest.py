import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

# Environment for every Ray started by the tests (set before Ray is imported anywhere).
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.1")
os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
os.environ.pop("RAY_ADDRESS", None)
os.environ.setdefault("MULTISTEP_CACHE", tempfile.mkdtemp(prefix="multistep-test-cache-"))  # not the user's ~/.cache


def pytest_collection_modifyitems(config, items):
    """MULTISTEP_TEST_ORDER=reverse runs the suite back to front: a test that passes only after another one's
    leftovers fails then (tools/suite_orders.sh runs both orders)."""
    if os.environ.get("MULTISTEP_TEST_ORDER") == "reverse":
        items.reverse()


@pytest.fixture(scope="session")
def ray_local():
    """One small local Ray instance for the whole session (Ray tests run serially on 2 cores)."""
    import ray

    tmp = tempfile.mkdtemp(prefix="msray", dir="/tmp")
    # Ray Train's placement-group cleaner finds "its" cluster through the dashboard address; with a second Ray
    # instance on the host (the submission test starts one) it must be told which one is ours.
    port = free_port()
    os.environ["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"
    ray.init(
        address="local",
        num_cpus=2,
        resources={"train_driver": 100},
        object_store_memory=200 * 1024**2,
        _temp_dir=tmp,
        include_dashboard=True,
        dashboard_port=port,
        log_to_driver=False,
        logging_level="WARNING",
    )
    yield ray
    ray.shutdown()
    os.environ.pop("RAY_API_SERVER_ADDRESS", None)


def session_processes(sid: int) -> list[str]:
    """Live processes of session `sid`: a driver started with start_new_session=True, the local Ray it started (whose
    processes inherit the session) and their workers. Empty once all of them are gone."""
    import subprocess

    out = subprocess.run(["ps", "-eo", "sid=,stat=,args="], capture_output=True, text=True).stdout.splitlines()
    return [line for line in out if line.split()[0] == str(sid) and not line.split()[1].startswith("Z")]


def wait_until_gone(sid: int, timeout: float = 40.0) -> list[str]:
    """Wait until session `sid` has no live process (then []), or return what is still alive after `timeout`."""
    import time

    deadline = time.time() + timeout
    while (left := session_processes(sid)) and time.time() < deadline:
        time.sleep(1)
    return left


def metric_points(client, runs) -> dict:
    """{run id: {metric: its full history}} of MLflow runs, every point as logged."""
    return {r.info.run_id: {k: client.get_metric_history(r.info.run_id, k) for k in r.data.metrics} for r in runs}


def assert_no_duplicate_points(client, runs) -> dict:
    """No run holds two points of one metric at one step; returns metric_points for later comparison."""
    points = metric_points(client, runs)
    for rid, run in points.items():
        for key, hist in run.items():
            steps = [m.step for m in hist]
            assert len(steps) == len(set(steps)), (rid, key, sorted(steps))
    return points


def garble(shard, row_group: int) -> None:
    """Flip 16 bytes in the middle of a Parquet shard's image column in one row group; the footer stays intact."""
    import pyarrow.parquet as pq

    col = pq.ParquetFile(shard).metadata.row_group(row_group).column(0)
    start = col.dictionary_page_offset if col.has_dictionary_page else col.data_page_offset
    mid = start + col.total_compressed_size // 2
    b = bytearray(shard.read_bytes())
    b[mid : mid + 16] = bytes(x ^ 0xFF for x in b[mid : mid + 16])
    shard.write_bytes(bytes(b))


def exit_spawned_rank() -> None:
    """End a spawned rank (torch.multiprocessing) without the interpreter's finalisation. Gloo's C++ threads and
    objects outlive destroy_process_group and are torn down during finalisation, which aborts the process now and
    then ("terminate called without an active exception", SIGABRT: 1 run in 15-60 here, 0 in 60 with this exit;
    tools/repeat.sh). Ray Train's workers never finalise this way (Ray ends them): the product does not hit it."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def tiny_sweep(tmp_path):
    """A sweep small enough for CI: 2 trials of 60 iterations on an 8-D mixture."""
    text = (REPO / "tests" / "data" / "tiny_sweep.yaml").read_text()
    p = tmp_path / "tiny.yaml"
    p.write_text(text)
    return p


@pytest.fixture
def one_thread():
    """One intra-op torch thread: the budget is per core, and on a shared 2-core box a second thread only spins."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def one_thread_module():
    """one_thread for a whole module, set up before its module-scoped fixtures (a teacher trained once per module):
    tiny convs on a shared 2-core box, where intra-op threads only add spin-wait (10x slower under load)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class TinyDetector(torch.nn.Module):
    """Same call signature as the StyleGAN/EDM Inception file: uint8 NCHW in, features out."""

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        if x.dtype != torch.uint8:
            raise RuntimeError("detector wants uint8 images")
        f = x.float()
        f = torch.cat([f.mean(dim=(2, 3)), f.amax(dim=(2, 3))], dim=1)  # (n, 6)
        return f if return_features else f.sum(1, keepdim=True)


def tiny_unet(in_channels: int = 1, num_class_embeds: int | None = None, seed: int = 0):
    """A random diffusers UNet2DModel for 8x8 images, small enough for CPU tests (diffusers imported here)."""
    import diffusers

    torch.manual_seed(seed)
    return diffusers.UNet2DModel(
        sample_size=8,
        in_channels=in_channels,
        out_channels=in_channels,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
        num_class_embeds=num_class_embeds,
    )


CAPTIONS = ["a red square", "a blue circle", "two lines"]


def char_clip_tokenizer(folder: Path, model_max_length: int = 12):
    """A CLIPTokenizer from local files written here: single characters as tokens, no merges."""
    import json

    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in "abcdefghijklmnopqrstuvwxyz0123456789":
        vocab |= {c: len(vocab), c + "</w>": len(vocab) + 1}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=model_max_length)


def tiny_clip(root: Path, seed: int = 0) -> Path:
    """A random transformers CLIPModel (8x8 images, 4x4 patches, 8-d projections) with its tokenizer, saved by
    save_pretrained into root/clip."""
    import transformers

    tok = char_clip_tokenizer(root / "clip-tokenizer", model_max_length=12)
    torch.manual_seed(seed)
    small = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2}
    cfg = transformers.CLIPConfig(
        text_config=small
        | {
            "vocab_size": len(tok),
            "max_position_embeddings": 12,
            "bos_token_id": 0,
            "eos_token_id": 1,
            "pad_token_id": 1,
        },
        vision_config=small | {"image_size": 8, "patch_size": 4},
        projection_dim=8,
    )
    transformers.CLIPModel(cfg).save_pretrained(str(root / "clip"))
    tok.save_pretrained(str(root / "clip"))
    return root / "clip"


def tiny_sd_pipeline(root: Path, seed: int = 0, text_dim: int = 16) -> Path:
    """A random Stable-Diffusion-format folder (model_index.json, unet UNet2DConditionModel, vae AutoencoderKL,
    CLIPTextModel text encoder, CLIPTokenizer from a character vocabulary written here, DDIM scheduler), saved by
    diffusers' own save_pretrained: 8x8 RGB images, 4x4x4 latents, 12-token prompts."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    tokenizer = char_clip_tokenizer(root / "tokenizer-src", model_max_length=12)
    text = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=text_dim,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=12,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 8),
        latent_channels=4,
        norm_num_groups=4,
        layers_per_block=1,
        sample_size=8,
    )
    unet = UNet2DConditionModel(
        sample_size=4,
        in_channels=4,
        out_channels=4,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=text_dim,
        attention_head_dim=2,
        norm_num_groups=4,
    )
    scheduler = DDIMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False, set_alpha_to_one=False
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=CLIPTextModel(text),
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(str(root / "pipeline"))
    return root / "pipeline"


def caption_set(out: Path, n: int = 96, size: int = 8, channels: int = 3, seed: int = 0, captions=CAPTIONS) -> Path:
    """Parquet caption data: n images, each a noisy pattern of its caption (CAPTIONS), with the caption column and
    the caption's index as the label column (each row's class)."""
    import numpy as np

    from multistep.data.parquet import write_shards

    rng = np.random.default_rng(seed)
    ids = np.arange(n) % len(captions)
    base = rng.integers(0, 256, (len(captions), size, size, channels))
    images = np.clip(base[ids] + rng.normal(0, 20, (n, size, size, channels)), 0, 255).astype(np.uint8)
    write_shards(images, ids, out, shard_size=64, captions=[captions[i] for i in ids])
    return out


def start_mlflow_server(tmp_path, port):
    """`mlflow server` in its own process group (it forks workers), so the test can stop all of it by PID."""
    from mlflow.tracking import MlflowClient

    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--backend-store-uri",
        f"sqlite:///{tmp_path / 'server.db'}",
        "--artifacts-destination",
        str(tmp_path / "art"),
    ]
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            MlflowClient(uri).search_experiments(max_results=1)
            return proc, uri
        except Exception:  # not up yet
            assert proc.poll() is None, "mlflow server exited at start"
            time.sleep(0.5)
    stop_server(proc)
    pytest.fail("mlflow server did not come up in 120 s")


def stop_server(proc):
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
