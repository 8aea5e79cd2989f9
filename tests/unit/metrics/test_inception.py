"""metrics/inception.py: the FID Inception-v3 graph for a plain state dict of the detector's weights, read by the
same extractor as the TorchScript file (eval.inception_path takes either). No real weights exist offline: the tests
check the layout (torchvision's names, an aux head ignored), the 2,048-d features and the one-line errors."""

import pytest
import torch

from multistep.metrics.extractors import InceptionExtractor
from multistep.metrics.inception import FIDInception

pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_state_dict_detector_gives_2048_features(tmp_path):
    torch.manual_seed(0)
    net = FIDInception().eval()
    sd = net.state_dict() | {"AuxLogits.fc.weight": torch.zeros(1, 1)}  # torchvision files carry the aux head
    torch.save(sd, tmp_path / "pt_inception.pth")
    ext = InceptionExtractor(tmp_path / "pt_inception.pth", batch_size=2)
    imgs = torch.randint(0, 256, (3, 3, 16, 16), dtype=torch.uint8)
    f = ext(imgs)
    assert f.shape == (3, 2048) and (f >= 0).all()  # pooled ReLU features
    with torch.no_grad():
        assert torch.allclose(torch.as_tensor(f).float(), net(imgs, return_features=True), atol=1e-5)
    assert len(ext.key["sha256"]) == 16


def test_files_that_are_neither_detector_are_one_line(tmp_path):
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="not of the FID Inception-v3 graph") as e:
        InceptionExtractor(tmp_path / "other.pth")
    assert "\n" not in str(e.value)
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(ValueError, match="neither a TorchScript detector nor a state dict"):
        InceptionExtractor(tmp_path / "junk.pt")
