"""Feature extractors (metrics/extractors.py): TorchScript detectors, identity, the digits classifier and its cache,
specs that rebuild an extractor in a trial; and no download code anywhere in metrics/."""

import re
import time

import numpy as np
import pytest
import torch

from conftest import TinyDetector
from multistep.metrics import frechet_distance, gaussian_stats, make_extractor


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_torchscript_extractor(tmp_path):
    path = tmp_path / "tiny-detector.pt"
    torch.jit.script(TinyDetector()).save(str(path))
    ext = make_extractor("inception", path=path, batch_size=3)
    assert ext.name == "inception" and len(ext.key["sha256"]) == 16
    imgs = torch.randint(0, 256, (7, 3, 5, 5), dtype=torch.uint8)
    f = ext(imgs)
    assert f.shape == (7, 6) and f.dtype == np.float64
    np.testing.assert_allclose(f[:, :3], imgs.double().mean(dim=(2, 3)).numpy(), rtol=1e-6)
    floats = imgs.float() / 127.5 - 1  # [-1, 1] floats map back to the same uint8 images
    np.testing.assert_allclose(ext(floats), f)
    gray = ext(imgs[:, :1])  # one channel is repeated to three
    np.testing.assert_allclose(gray[:, 0], gray[:, 2])
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "missing.pt"))):
        make_extractor("inception", path=tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage, not a TorchScript archive")
    with pytest.raises(ValueError, match=re.escape(str(bad))):
        make_extractor("inception", path=bad)


def test_no_download_code_in_metrics():
    from conftest import REPO

    src = REPO / "platform" / "multistep" / "metrics"
    text = "\n".join(p.read_text() for p in src.glob("*.py"))
    for needle in ("urllib", "requests", "http://", "https://", "hub.load", "download_url", "urlretrieve"):
        assert needle not in text


def test_identity_and_unknown_extractor():
    f = make_extractor("identity")(torch.ones(4, 2, 3))
    assert f.shape == (4, 6) and f.dtype == np.float64
    with pytest.raises(ValueError, match="unknown extractor"):
        make_extractor("clip")


def test_classifier_extractor_on_digits(tmp_path):
    from multistep.data.digits import load_digits

    t0 = time.perf_counter()
    ext = make_extractor("classifier", dataset="digits", cache_dir=tmp_path)
    train_s = time.perf_counter() - t0
    assert ext.trained and ext.accuracy > 0.9 and train_s < 30
    x, _ = load_digits()
    f = ext(x[:300])
    assert f.shape == (300, 64) and f.dtype == np.float64 and np.isfinite(f).all()
    np.testing.assert_array_equal(ext(x[:300].reshape(300, 64)), f)  # flattened input works too
    again = make_extractor("classifier", dataset="digits", cache_dir=tmp_path)  # same settings: read from disk
    assert not again.trained and again.key == ext.key
    np.testing.assert_array_equal(again(x[:300]), f)
    other = make_extractor("classifier", dataset="digits", cache_dir=tmp_path, epochs=1)  # new settings: new file
    assert other.trained and other.key["sha256"] != ext.key["sha256"]
    other.path.write_bytes(b"truncated")  # an unreadable cached model is retrained, not trusted
    assert make_extractor("classifier", dataset="digits", cache_dir=tmp_path, epochs=1).trained
    # The features see digits: two halves of the data are far closer than data and noise.
    real = frechet_distance(*gaussian_stats(ext(x[:800])), *gaussian_stats(ext(x[800:1600])))
    noise = frechet_distance(*gaussian_stats(ext(x[:800])), *gaussian_stats(ext(torch.rand(800, 1, 8, 8) * 2 - 1)))
    assert noise > 10 * real


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_extractor_specs_rebuild_the_same_features(tmp_path):
    """What the sweep driver ships to trials (spec) rebuilds the same extractor there, without data or cache."""
    from multistep.data.digits import load_digits
    from multistep.metrics.extractors import from_spec

    x = load_digits(8)[0][:50]
    clf = make_extractor("classifier", dataset="digits", cache_dir=tmp_path, epochs=1)
    again = from_spec(clf.spec())
    np.testing.assert_array_equal(again(x), clf(x))
    np.testing.assert_array_equal(again.predict(again(x)), clf.model(x.reshape(50, -1)).argmax(1).numpy())
    path = tmp_path / "tiny-detector.pt"
    torch.jit.script(TinyDetector()).save(str(path))
    det = make_extractor("inception", path=path)
    np.testing.assert_array_equal(from_spec(det.spec())(x), det(x))
