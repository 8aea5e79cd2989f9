"""train/build.py: data of every image kind as the trials draw it, and a checkpoint teacher the student copies."""

import numpy as np
import pytest
import torch

from multistep.config import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread_module")


def test_image_data_kinds(tmp_path):
    from multistep.config import DataCfg
    from multistep.data.parquet import write_shards
    from multistep.train.build import make_data

    digits = make_data(DataCfg(kind="digits", size=16))
    a, b = (digits.sample(300, torch.Generator().manual_seed(0)) for _ in range(2))
    assert (
        digits.shape == (1, 16, 16) and a.shape == (300, 1, 16, 16) and torch.equal(a, b)
    )  # rows drawn by the generator
    assert a.min() == -1 and a.max() == 1 and a.dtype == torch.float32
    assert make_data(DataCfg(kind="digits")).sample(2, dtype=torch.float64).dtype == torch.float64
    imgs = np.random.default_rng(0).integers(0, 256, (50, 4, 4, 3), dtype=np.uint8)
    write_shards(imgs, None, tmp_path / "ds", shard_size=20)
    cfg = DataCfg(kind="parquet", path=str(tmp_path / "ds"))
    data = make_data(cfg)
    x = data.sample(1000, torch.Generator().manual_seed(1))
    assert data.shape == (3, 4, 4) and cfg.fd_space == "pixel" and cfg.label == "parquet:ds"
    pixels = {tuple(np.round((r.numpy() + 1) * 127.5).astype(np.uint8).transpose(1, 2, 0).ravel()) for r in x}
    assert pixels <= {tuple(i.ravel()) for i in imgs} and len(pixels) > 40  # real images, NHWC -> NCHW, [-1, 1]


def test_build_with_checkpoint_teacher(tmp_path):
    from multistep.config import TrialCfg
    from multistep.train.build import build
    from multistep.train.teacher import save_teacher

    net_cfg = {"kind": "unet", "base_ch": 4, "ch_mult": [1], "time_dim": 8, "in_ch": 1, "resolution": 8}
    from multistep.train.teacher import build_net

    torch.manual_seed(0)
    state = {k: v + 0.01 * torch.randn_like(v) for k, v in build_net(net_cfg).state_dict().items()}
    path = save_teacher(
        tmp_path / "t.pt", net_cfg, state, {"schedule": {"name": "clipped_cosine", "params": {}}, "shape": [1, 8, 8]}
    )
    cfg = TrialCfg.model_validate(
        {
            "data": {"kind": "digits"},
            "teacher": {"kind": "checkpoint", "path": str(path)},
            "student": {"init_iterations": 3000},
        }
    )
    c = build(cfg)
    assert c.schedule.name == "clipped_cosine"  # the checkpoint's schedule, not the config's default
    t_params, s_params = list(c.teacher.net.parameters()), list(c.student.net.parameters())
    assert all(torch.equal(a, b) and a is not b for a, b in zip(t_params, s_params))  # student = a copy of the teacher
    assert not any(p.requires_grad for p in t_params) and all(p.requires_grad for p in s_params)
    z, t = torch.randn(3, 1, 8, 8, dtype=torch.float64), torch.rand(3, dtype=torch.float64)
    assert c.teacher(z, t).dtype == torch.float64 and torch.equal(c.teacher(z, t), c.student(z, t))
    with pytest.raises(ConfigError, match=r"teacher.path: .*shape \(1, 8, 8\).*digits16.*\(1, 16, 16\)"):
        build(
            TrialCfg.model_validate(
                {"data": {"kind": "digits", "size": 16}, "teacher": {"kind": "checkpoint", "path": str(path)}}
            )
        )
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="teacher.path: .*junk.pt: not a readable teacher checkpoint"):
        build(
            TrialCfg.model_validate(
                {"data": {"kind": "digits"}, "teacher": {"kind": "checkpoint", "path": str(tmp_path / "junk.pt")}}
            )
        )
