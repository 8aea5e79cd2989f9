"""CLIPScore of caption-conditioned samples (metrics/clip.py) with a tiny random CLIPModel saved by transformers'
own save_pretrained: 100 max(cos, 0) of the model's own embeddings, the processor's normalisation, captions by id
with the empty prompt last, and a bad folder named in one line."""

import numpy as np
import pytest
import torch

from conftest import tiny_clip

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    return tiny_clip(tmp_path_factory.mktemp("clip"))


def test_the_score_is_100_times_the_clipped_cosine_of_the_models_own_embeddings(clip_folder):
    from multistep.metrics.clip import CLIP_MEAN, CLIP_STD, Alignment, ClipScore, _embedding

    score = ClipScore(clip_folder)
    images = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1  # already 8x8: no resize
    captions = ["a red square", "two lines", "a red square", ""]
    model = transformers.CLIPModel.from_pretrained(str(clip_folder))
    tok = transformers.AutoTokenizer.from_pretrained(str(clip_folder))
    mean, std = torch.tensor(CLIP_MEAN).reshape(1, 3, 1, 1), torch.tensor(CLIP_STD).reshape(1, 3, 1, 1)
    with torch.no_grad():
        img = _embedding(model.get_image_features(pixel_values=((images + 1) / 2 - mean) / std))
        txt = _embedding(model.get_text_features(**tok(captions, padding=True, return_tensors="pt")))
    want = 100 * torch.nn.functional.cosine_similarity(img, txt).clamp_min(0)
    np.testing.assert_allclose(score(images, captions), want.double().numpy(), rtol=1e-4, atol=1e-4)
    ids = torch.tensor([0, 1, 0, 2])  # vocabulary of two captions; id 2 = K: the empty prompt
    np.testing.assert_allclose(Alignment(score, ["a red square", "two lines"])(images, ids), score(images, captions))
    gray = Alignment(score, ["a red square"], decode=lambda z: z[:, :1])(images, torch.tensor([0, 0, 0, 0]))
    assert gray.shape == (4,) and (gray >= 0).all()  # one channel repeated to three; decode applied first
    big = score(torch.zeros(2, 3, 32, 32), ["two lines", "x"])  # resized to the model's 8x8
    assert big.shape == (2,)


def test_a_folder_without_a_clip_model_is_one_line(tmp_path):
    from multistep.metrics.clip import ClipScore

    with pytest.raises(ValueError, match=r"^eval.clip_path: .*: not a CLIPModel folder") as e:
        ClipScore(tmp_path)
    assert "\n" not in str(e.value)
