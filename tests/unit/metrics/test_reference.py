"""metrics/reference.py and eval.reference: FD against reference statistics from an .npz (EDM fid.py / pytorch-fid /
clean-fid format) equals FD against the in-memory reference they were computed from; `multistep eval
--make-reference` writes them from Parquet shards; bad files are one line, exit 2, before any sampling."""

import numpy as np
import pytest
import torch
import yaml

from multistep.cli import main
from multistep.config import ConfigError, load_sweep
from multistep.data.gmm import GaussianMixture
from multistep.diffusion.schedules import make_schedule
from multistep.metrics import reference
from multistep.metrics.evaluate import evaluate, make_eval_ref
from multistep.metrics.frechet import gaussian_stats
from multistep.nets.analytic import MixtureDenoiser
from multistep.sweep import preflight

pytestmark = pytest.mark.usefixtures("one_thread")
GMM = GaussianMixture.random((4,), 3, 0.6, 0.2, seed=2)
COS = make_schedule("cosine")


def test_fd_against_a_reference_file_equals_fd_against_its_data(tmp_path):
    ref = make_eval_ref(GMM, MixtureDenoiser(GMM, COS), COS, 300, 8, seed=3, kid_subsets=5)
    mu, sigma = gaussian_stats(ref.data)
    reference.write(tmp_path / "ref.npz", mu, sigma, ref.data)
    stats = reference.load(tmp_path / "ref.npz")
    assert stats.dim == 4 and len(stats.sha256) == 64
    x = GMM.sample(300, torch.Generator().manual_seed(4), dtype=torch.float64)
    names = ref.names("identity")
    plain = evaluate(x, ref, names, kid_subsets=5)
    ref.reference = stats
    with_file = evaluate(x, ref, names, kid_subsets=5)
    assert with_file == plain  # the same statistics, the same features for KID
    ref.reference = reference.Reference(mu, sigma, None, stats.sha256)  # statistics only: KID is skipped
    assert set(evaluate(x, ref, names, kid_subsets=5)) == {names["fd"], names["swd"], names["ode"]}


def test_make_reference_writes_the_statistics_of_the_shards(tmp_path):
    from multistep.data.parquet import write_shards

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (50, 4, 4, 1), dtype=np.uint8)
    write_shards(x, None, tmp_path / "ds", shard_size=20)
    out = tmp_path / "ref.npz"
    assert main(["eval", "--make-reference", str(tmp_path / "ds"), "--features", "--out", str(out)]) == 0
    r = reference.load(out)
    pixels = x.transpose(0, 3, 1, 2).reshape(50, -1) / 127.5 - 1.0  # the platform's [-1, 1] pixels
    mu, sigma = gaussian_stats(pixels)
    assert np.allclose(r.mu, mu, atol=1e-12) and np.allclose(r.sigma, sigma, atol=1e-12)
    assert r.features.shape == (50, 16)


def test_bad_references_are_one_line_before_anything_starts(tmp_path):
    np.savez(tmp_path / "nomu.npz", sigma=np.eye(4))
    np.savez(tmp_path / "dim.npz", mu=np.zeros(3), sigma=np.eye(3))
    (tmp_path / "junk.npz").write_bytes(b"not an npz")
    (tmp_path / "det.pt").write_bytes(b"not a TorchScript detector")
    base = {"name": "r", "data": {"kind": "gmm", "shape": [4]}}
    cases = [
        ({"reference": str(tmp_path / "nomu.npz")}, "eval.reference: .*nomu.npz: no mu in it"),
        ({"reference": str(tmp_path / "junk.npz")}, "eval.reference: .*junk.npz: not a readable .npz file"),
        (
            {"reference": str(tmp_path / "dim.npz")},
            "eval.reference: .*dimension 3, but identity features of this data have dimension 4",
        ),
    ]
    import re

    for ev, msg in cases:
        f = tmp_path / "s.yaml"
        f.write_text(yaml.safe_dump(base | {"eval": ev}))
        with pytest.raises(ConfigError) as e:
            preflight.inputs(load_sweep(f))
        assert re.search(msg, str(e.value)) and "\n" not in str(e.value), str(e.value)
    f.write_text(
        yaml.safe_dump(
            {
                "name": "r",
                "data": {"kind": "digits"},
                "eval": {"extractor": "inception", "inception_path": str(tmp_path / "det.pt")},
                "teacher": {"kind": "checkpoint", "path": str(tmp_path / "det.pt")},
            }
        )
    )
    with pytest.raises(ConfigError, match="eval.inception_path: cannot load TorchScript detector"):
        preflight.inputs(load_sweep(f))
